"""The batch annotator's local engine: `nlp.pipe` in this process, or in worker processes
that stop cleanly.

Workers are spawned, ignore SIGINT (the main process handles Ctrl-C and stops them) and exit
by themselves when their parent is gone, so that no interrupted or killed run leaves one
behind.
"""

import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch
from spacy.language import Language
from spacy.util import minibatch

from .records import Annotated, Shard, assemble, doc_ents, load_pipeline, score_keys
from .rows import AnnotateError

# Batches in flight per local worker process.
_IN_FLIGHT = 4
# Seconds a worker waits for work before it checks that its parent is still there, and the
# main process waits for an answer before it checks that the workers are.
_PARENT_POLL = 0.5
# Seconds stopping workers get to exit, after being told and again after SIGTERM.
_STOP_GRACE = 2.0


def local_engine(
    nlp: Language,
    shards: Iterable[Shard],
    *,
    model: str,
    max_chars: int,
    batch_size: int,
    workers: int,
    settings: dict[str, Any] | None = None,
) -> Iterator[Annotated]:
    """`nlp.pipe` over every shard's good texts: in this process for one worker, else in
    `workers` processes that each load `model` (with `settings`) once and send back only the
    entities.

    Not `nlp.pipe(n_process=...)`: that sends every Doc back as bytes, and this process then
    spends milliseconds per Doc in `Doc.from_bytes` (srsly looks its msgpack hooks up in
    spaCy's whole registry for each call), which caps it at a few hundred docs/s. Closing
    the iterator (or an exception in it, such as KeyboardInterrupt) stops the workers.
    """
    waiting: deque[Shard] = deque()

    def texts() -> Iterator[str]:
        for shard in shards:
            waiting.append(shard)
            for row in shard.rows:
                if row.error is None:
                    yield row.text

    if workers == 1:
        keys = score_keys(nlp)
        docs = nlp.pipe(texts(), batch_size=batch_size)
        yield from assemble(waiting, ((doc_ents(doc, keys), len(doc)) for doc in docs))
        return
    pool = WorkerPool(workers, (model, max_chars, batch_size, settings))
    try:
        pool.start()
        yield from assemble(waiting, pool.results(texts(), batch_size))
    finally:
        pool.stop()


class WorkerPool:
    """Spawned processes that each load the pipeline once, then annotate batches of texts
    from one queue; results come back in the order the batches went in.

    Only the main process handles SIGINT: a terminal's Ctrl-C reaches the whole process
    group, and the workers ignore it, so that the main process decides how to stop. The
    workers never outlive it: `stop` ends them (a grace period, then SIGKILL), and a worker
    whose parent is gone (killed with SIGKILL, say) exits by itself within `_PARENT_POLL`
    seconds of waiting for work. Not a `ProcessPoolExecutor`: its workers block in
    `Queue.get` with SIGINT on, and its exit handler waits for them, so that an interrupted
    run printed tracebacks or hung.
    """

    def __init__(self, workers: int, load: tuple) -> None:
        """`workers` processes to start, each loading `load`: `(model, max_chars, batch_size,
        settings)`."""
        self.context = multiprocessing.get_context("spawn")
        self.tasks = self.context.Queue()
        self.answers = self.context.Queue()
        # Not joined at exit: after an interrupt, tasks may be left in a pipe that no process
        # reads any more.
        self.tasks.cancel_join_thread()
        self.workers = workers
        self.load = load
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.finished = False

    def start(self) -> None:
        """Start the workers. They start with SIGINT blocked (they inherit the mask) and ignore
        it before they unblock it: a Ctrl-C during their start-up reaches this process only."""
        with _blocked(signal.SIGINT):
            for number in range(self.workers):
                process = self.context.Process(
                    target=_worker_main,
                    args=(self.tasks, self.answers, self.load, os.getpid()),
                    name=f"annotate-worker-{number}",
                    daemon=True,
                )
                process.start()
                self.processes.append(process)

    def results(self, texts: Iterator[str], batch_size: int) -> Iterator[tuple[list[dict], int]]:
        """`(ents, words)` per text, in order; a few batches per worker in flight, so that the
        input is read as fast as it is annotated, no faster."""
        early: dict[int, list] = {}
        sent = received = 0
        for batch in minibatch(texts, size=batch_size):
            self.tasks.put((sent, batch))
            sent += 1
            if sent - received >= len(self.processes) * _IN_FLIGHT:
                yield from self._answer(received, early)
                received += 1
        for number in range(received, sent):
            yield from self._answer(number, early)
        self.finished = True

    def _answer(self, number: int, early: dict[int, list]) -> list[tuple[list[dict], int]]:
        """The results of batch `number`, keeping those of later batches that come first; an
        error if a worker failed or died."""
        while number not in early:
            try:
                got, results, failure = self.answers.get(timeout=_PARENT_POLL)
            except queue.Empty:
                self._check_alive()
                continue
            if failure is not None:
                raise failure
            early[got] = results
        return early.pop(number)

    def _check_alive(self) -> None:
        """An error if a worker has ended (killed for memory, say): its batches are lost."""
        for process in self.processes:
            if process.exitcode is not None:
                raise RuntimeError(
                    f"The annotator's worker process {process.name} died "
                    f"(exit code {process.exitcode}); rerun the command to resume."
                )

    def stop(self) -> None:
        """End every worker: idle ones (after the last answer) by telling them, busy ones
        (after an interrupt or an error) at once with SIGTERM, and SIGKILL for any still there
        after a grace period. SIGINT and SIGTERM are ignored meanwhile (in the main thread), so
        that a second Ctrl-C cannot cut this short and leave workers behind."""
        with _ignored(signal.SIGINT, signal.SIGTERM):
            if self.finished:
                for _ in self.processes:
                    self.tasks.put(None)
                _join_all(self.processes, _STOP_GRACE)
            for process in self.processes:
                if process.is_alive():
                    process.terminate()
            _join_all(self.processes, _STOP_GRACE)
            for process in self.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
            self.tasks.close()
            self.answers.close()


def _join_all(processes: list[multiprocessing.process.BaseProcess], seconds: float) -> None:
    """Wait up to `seconds` in all for `processes` to end."""
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))


@contextmanager
def _blocked(*signals: int) -> Iterator[None]:
    """Block `signals` in this thread inside the block; pending ones arrive after it."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_signal(number: int, frame: FrameType | None) -> None:
    """A signal handler that does nothing. Unlike SIG_IGN, it takes a signal that came just
    before it was set without Python printing "Signal N ignored due to race condition"."""


@contextmanager
def _ignored(*signals: int) -> Iterator[None]:
    """Ignore `signals` inside the block, where this is the main thread (elsewhere Python
    delivers none); their handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, ignore_signal) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _worker_main(tasks: Any, answers: Any, load: tuple, parent: int) -> None:
    """A worker process: load the pipeline, then answer `(number, texts)` tasks with
    `(number, results, None)` (or `(number, None, error)`) until told to stop (None) or the
    parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    model, max_chars, batch_size, settings = load
    try:
        nlp = _worker_pipeline(model, max_chars, settings)
    except Exception as error:
        answers.put((-1, None, _portable(error)))
        return
    keys = score_keys(nlp)
    while os.getppid() == parent:
        try:
            task = tasks.get(timeout=_PARENT_POLL)
        except queue.Empty:
            continue
        if task is None:
            return
        number, texts = task
        try:
            docs = nlp.pipe(texts, batch_size=batch_size)
            answers.put((number, [(doc_ents(doc, keys), len(doc)) for doc in docs], None))
        except Exception as error:
            answers.put((number, None, _portable(error)))
            return
    answers.cancel_join_thread()  # the parent is gone: no one reads them any more


def _portable(error: Exception) -> Exception:
    """`error` as something that survives pickling: itself if it is an `AnnotateError`, else a
    RuntimeError with the worker's traceback."""
    if isinstance(error, AnnotateError):
        return AnnotateError(str(error))
    trace = "".join(traceback.format_exception(error))
    return RuntimeError(f"An annotator worker process failed:\n{trace}")


def _worker_pipeline(model: str, max_chars: int, settings: dict[str, Any] | None) -> Language:
    """A worker process's pipeline with one torch thread (as Ray gives each actor one CPU):
    more threads than cores only wait for each other."""
    torch.set_num_threads(1)
    return load_pipeline(model, max_chars, threads=1, settings=settings)
