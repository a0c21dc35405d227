"""Run independent torch tasks on a few threads, with one intra-op thread for the duration.

torch's own intra-op threads help little at the sizes of a tagger's recurrences, and on a
machine whose cores other jobs hold they wait for each other at every operation: a 2-thread
`nlp.pipe` then runs several times slower than a 1-thread one. Independent tasks (one per
direction and length bucket of a BiLSTM layer) on a small pool of threads, with torch set to
one intra-op thread, use free cores when there are some and fall back to one core's speed when
there are not. torch releases the GIL inside its kernels, so the threads run in parallel.
"""

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), at most 2: the tagger's tasks
    are too small to feed more threads."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(2, available))


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block, its setting restored after.

    torch's setting is process-wide: torch work that other threads of the program run at the
    same time gets one thread too, until the block ends.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def run_tasks(tasks: Sequence[Callable[[], T]], threads: int) -> list[T]:
    """Results of `tasks`, in order: on the calling thread when `threads` is 1, else on a pool
    of `threads` threads (one pool per process: threads do not survive `fork`).

    torch's grad mode is thread-local, so each task runs with the caller's.
    """
    if threads <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    grad = torch.is_grad_enabled()

    def run(task: Callable[[], T]) -> T:
        with torch.set_grad_enabled(grad):
            return task()

    return list(_pool(threads).map(run, tasks))


def _pool(threads: int) -> ThreadPoolExecutor:
    key = (os.getpid(), threads)
    with _lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="bilstm-crf")
        return _pools[key]
