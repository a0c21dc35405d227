"""The batch annotator's engines: `nlp.pipe` in this process or in worker processes, or Ray Data.

Both take the shards still to do, send only their good rows' texts through the pipeline, and
give back each shard complete and in input order: `assemble` puts every result at its row and
fills the error rows in between. Ray is imported only when the Ray engine runs, so the local
engine works without it.
"""

import inspect
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import spacy
import srsly
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from .annotate_io import AnnotateError, Row, require_pyarrow

# The rows per Ray Data block: enough for several batches, few enough to stream.
_BLOCK_BATCHES = 4
# Batches in flight per local worker process.
_IN_FLIGHT = 4
# Seconds a worker waits for work before it checks that its parent is still there, and the
# main process waits for an answer before it checks that the workers are.
_PARENT_POLL = 0.5
# Seconds stopping workers get to exit, after being told and again after SIGTERM.
_STOP_GRACE = 2.0
# Ray's switch for its single-machine mode, in which a local cluster binds to loopback only.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class Shard(NamedTuple):
    """Input rows `[start, start + len(rows))`, written together as output shard `index`."""

    index: int
    start: int
    rows: list[Row]


class Annotated(NamedTuple):
    """A shard's output records, one per input row in order, and the words annotated."""

    shard: Shard
    records: list[dict]
    words: int


def load_pipeline(
    model: str | Path,
    max_chars: int | None = None,
    threads: int | None = None,
    settings: dict[str, Any] | None = None,
) -> Language:
    """`spacy.load(model)`, with `nlp.max_length` raised to `max_chars` where that is more,
    the `bilstm_crf` components on `threads` threads when given (a worker or actor that
    shares the machine with others uses one), and `settings` (e.g. `confidence`,
    `threshold`) set on each of them: an error if there is none to set them on."""
    try:
        nlp = spacy.load(model)
    except (OSError, ValueError) as error:
        raise AnnotateError(f"Cannot load the pipeline {str(model)!r}: {error}") from error
    if max_chars is not None and max_chars > nlp.max_length:
        nlp.max_length = max_chars
    ours = [nlp.get_pipe(name) for name in nlp.pipe_names if _is_ours(nlp, name)]
    if settings and not ours:
        options = " and ".join(f"--{key}" for key in settings)
        raise AnnotateError(
            f"The pipeline {str(model)!r} has no bilstm_crf component for {options} to set; "
            f"its components: {nlp.pipe_names}."
        )
    for pipe in ours:
        pipe.cfg.update(settings or {})
        if threads is not None:
            pipe.cfg["threads"] = threads
    return nlp


def _is_ours(nlp: Language, name: str) -> bool:
    return nlp.get_pipe_meta(name).factory == "bilstm_crf"


def score_keys(nlp: Language) -> list[str]:
    """The `doc.spans` keys where `bilstm_crf` components with `confidence` put their scores."""
    keys = []
    for name in nlp.pipe_names:
        if _is_ours(nlp, name):
            cfg = nlp.get_pipe(name).cfg
            if cfg.get("confidence"):
                keys.append(cfg["spans_key"])
    return keys


def doc_ents(doc: Doc, keys: list[str]) -> list[dict[str, Any]]:
    """`doc.ents` as records; with score `keys`, each has the score of its span (or None)."""
    scores: dict[tuple[int, int, str], float] = {}
    for key in keys:
        group = doc.spans.get(key)
        if group is None:
            continue
        for span, score in zip(group, group.attrs.get("scores", ())):
            scores.setdefault((span.start, span.end, span.label_), float(score))
    ents = []
    for ent in doc.ents:
        record: dict[str, Any] = {
            "start_char": ent.start_char,
            "end_char": ent.end_char,
            "label": ent.label_,
        }
        if keys:
            record["score"] = scores.get((ent.start, ent.end, ent.label_))
        ents.append(record)
    return ents


def assemble(
    waiting: deque[Shard], results: Iterable[tuple[list[dict], int]]
) -> Iterator[Annotated]:
    """Complete shards in order from `results`, one `(ents, words)` per good row in input order.

    `waiting` holds the shards whose texts went into the pipeline and are not complete yet,
    oldest first; the engine may append to it while `results` is being read.
    """
    records: list[dict] = []
    words = 0

    def ready() -> Iterator[Annotated]:
        """Finish the oldest shards that need no more results; stop at one that does."""
        nonlocal records, words
        while waiting:
            rows = waiting[0].rows
            while len(records) < len(rows) and rows[len(records)].error is not None:
                row = rows[len(records)]
                records.append({"id": row.id, "ents": [], "error": row.error})
            if len(records) < len(rows):
                return
            yield Annotated(waiting.popleft(), records, words)
            records, words = [], 0

    for ents, count in results:
        yield from ready()
        if not waiting:
            raise RuntimeError("The pipeline returned more docs than it was given texts.")
        row = waiting[0].rows[len(records)]
        records.append({"id": row.id, "ents": ents, "error": None})
        words += count
        yield from ready()
    yield from ready()
    if waiting:
        raise RuntimeError("The pipeline returned fewer docs than it was given texts.")


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


def require_ray() -> Any:
    """The ray module with Ray Data, or an error naming the extra that installs them.

    Without RAY_ADDRESS, Ray is first imported in its single-machine mode (the default on macOS
    and Windows), so that the cluster `ray.init()` starts listens on 127.0.0.1 only; Ray reads
    the setting when it is imported, so a process that imported Ray before keeps its own.
    """
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(_LOOPBACK_ENV, "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise AnnotateError(
            "The Ray engine needs Ray Data, which is not installed: "
            'pip install "spacy-bilstm-crf[ray]"'
        ) from error
    require_pyarrow("The Ray engine")
    return ray


class RayAnnotator:
    """A Ray Data actor: loads the pipeline once, in `__init__`, then annotates batches."""

    def __init__(
        self,
        model: str,
        max_chars: int,
        batch_size: int,
        use_gpu: bool,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if use_gpu:
            spacy.require_gpu()
        self.nlp = load_pipeline(model, max_chars, threads=1, settings=settings)
        self.keys = score_keys(self.nlp)
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> Any:
        """A pyarrow table of `row`, `text` to one of `row`, `ents` (as JSON), `words`."""
        import pyarrow

        ents, words = [], []
        texts = batch.column("text").to_pylist()
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            ents.append(srsly.json_dumps(doc_ents(doc, self.keys)))
            words.append(len(doc))
        return pyarrow.table({"row": batch.column("row"), "ents": ents, "words": words})


def ray_engine(
    model: str,
    shards: Iterable[Shard],
    *,
    batch_size: int,
    workers: int,
    max_chars: int,
    gpus_per_actor: float = 0.0,
    settings: dict[str, Any] | None = None,
) -> Iterator[Annotated]:
    """Ray Data over every shard's good texts: `workers` actors for the whole job, order kept.

    The driver reads the input, sends the texts to the object store and writes the shards as
    the results stream back; the actors load the pipeline from `model` (a folder that exists
    at the same path on every node, or an installed package), with `settings` set on its
    `bilstm_crf` components.

    The actors are not restarted when they die (`max_restarts=0`): the job stops with an
    error and a rerun resumes from the complete shards. Ray Data's default, endless
    restarts, would retry a batch that kills its actor forever, and makes Ray core log an
    error-level line in every run ("constructor arguments in the object store and
    max_restarts > 0", ray-project/ray#57733), about Ray Data's own arguments.
    """
    ray = require_ray()
    import pyarrow

    waiting: deque[Shard] = deque()
    rows, texts = [], []
    for shard in shards:
        for position, row in enumerate(shard.rows):
            if row.error is None:
                rows.append(shard.start + position)
                texts.append(row.text)
        # The texts go to Ray; the driver keeps only the ids and errors.
        waiting.append(shard._replace(rows=[row._replace(text=None) for row in shard.rows]))
    if not texts:
        yield from assemble(waiting, ())
        return
    started = _connect(ray, workers, gpus_per_actor)
    options = ray.data.DataContext.get_current().execution_options
    saved = options.preserve_order
    options.preserve_order = True
    try:
        table = pyarrow.table({"row": pyarrow.array(rows, pyarrow.int64()), "text": texts})
        del texts
        # Blocks of a few batches, and a few blocks per actor even for small inputs.
        per_actor = -(-len(rows) // (workers * _BLOCK_BATCHES))
        block = max(1, min(batch_size * _BLOCK_BATCHES, per_actor))
        blocks = [table.slice(offset, block) for offset in range(0, len(rows), block)]
        dataset = _map_batches(
            ray.data.from_arrow(blocks),
            RayAnnotator,
            fn_constructor_kwargs={
                "model": model,
                "max_chars": max_chars,
                "batch_size": batch_size,
                "use_gpu": gpus_per_actor > 0,
                "settings": settings,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=gpus_per_actor or None,
        )
        yield from assemble(waiting, _in_order(dataset, rows))
    finally:
        options.preserve_order = saved
        if started:
            ray.shutdown()


def _map_batches(dataset: Any, fn: type, **options: Any) -> Any:
    """`dataset.map_batches(fn, **options)` with actors that are not restarted.

    Ray Data names no parameter for `max_restarts`: it goes with the remote arguments that
    `map_batches` takes as keywords, a way it deprecates (for Ray 2.64) without another yet.
    So it is passed while `map_batches` takes keywords, with that deprecation silenced here
    alone, and left out once it does not.
    """
    takes_keywords = any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        for parameter in inspect.signature(dataset.map_batches).parameters.values()
    )
    if not takes_keywords:
        return dataset.map_batches(fn, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(fn, max_restarts=0, **options)


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray cluster on loopback, without the dashboard (all cores by default)."""
    ray = require_ray()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning")


def _join_cluster(ray: Any, address: str) -> None:
    """Connect to the cluster at `address`, with a hint when that fails."""
    try:
        ray.init(address=address, logging_level="warning")
    except ConnectionError as error:
        hint = ""
        if not os.environ.get("RAY_AUTH_MODE"):
            hint = (
                " A cluster started by `ray start --head` checks a token (in ~/.ray/auth_token"
                " on the head node): set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN or"
                " RAY_AUTH_TOKEN_PATH on another machine."
            )
        raise AnnotateError(
            f"Cannot connect to the Ray cluster at RAY_ADDRESS={address}: {error}.{hint}"
        ) from error


def _in_order(dataset: Any, rows: list[int]) -> Iterator[tuple[list[dict], int]]:
    """The dataset's `(ents, words)` per row, checked to come back in the order sent."""
    position = 0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        got = batch.column("row").to_pylist()
        if got != rows[position : position + len(got)]:
            raise RuntimeError("Ray Data returned rows out of order; preserve_order was lost.")
        position += len(got)
        for ents, words in zip(batch.column("ents").to_pylist(), batch.column("words")):
            yield srsly.json_loads(ents), words.as_py()


def _connect(ray: Any, workers: int, gpus_per_actor: float) -> bool:
    """Join the cluster at RAY_ADDRESS, or start a local one on loopback; True if this call
    started Ray (and so should shut it down). Too few CPUs or GPUs for the actors is an error
    on a local cluster, and a warning on another (it may scale up)."""
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            _join_cluster(ray, os.environ["RAY_ADDRESS"])
        else:
            init_local_ray()
        started = True
    resources = ray.cluster_resources()
    needs = {"CPU": float(workers), "GPU": workers * gpus_per_actor}
    for name, needed in needs.items():
        if needed > resources.get(name, 0.0):
            message = (
                f"{workers} Ray actors need {needed:g} {name}s, but the cluster has "
                f"{resources.get(name, 0.0):g}: lower --workers."
            )
            if not os.environ.get("RAY_ADDRESS"):
                if started:
                    ray.shutdown()
                raise AnnotateError(message)
            warnings.warn(message, stacklevel=2)
    return started
