"""Run independent torch tasks on a few threads, with one intra-op thread for the duration.

torch's own intra-op threads help little at the sizes of a tagger's recurrences, and on a
machine whose cores other jobs hold they wait for each other at every operation: a 2-thread
`nlp.pipe` then runs several times slower than a 1-thread one. Independent tasks (one per
direction and length bucket of a BiLSTM layer) on a small pool of threads, with torch set to
one intra-op thread, use free cores when there are some and fall back to one core's speed when
there are not. torch releases the GIL inside its kernels, so the threads run in parallel.

Whether a second core is free changes while a program runs (a build starts, a training job
ends): `default_threads` reads the machine's CPU counters at most every half second, takes
away what this process used, and gives the second thread only while other jobs leave most of
a second core free. On a machine whose cores other jobs hold, a second thread that waits for
its cores at every step runs slower than one thread (1.7x on a 2-core Xeon).
"""

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), at most 2 (the tagger's tasks are
    too small to feed more), and 1 while other jobs hold the machine's cores."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    limit = max(1, min(2, available))
    return limit if limit == 1 else _monitor.threads(limit)


class CoreMonitor:
    """How many cores other jobs leave free, from `/proc/stat` (Linux; elsewhere none is
    known and every core counts as free).

    Every `interval` seconds at most: the cores busy over the interval, less the CPU time this
    process used, are the other jobs' load; a second thread is given while the machine's
    cores less that load leave `needed` cores or more.
    """

    def __init__(self, interval: float = 0.5, needed: float = 1.5, path: str = "/proc/stat"):
        self.interval = interval
        self.needed = needed
        self.path = path
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last: tuple[float, float, float, int] | None = None
        self.free: float | None = None
        self.lock = threading.Lock()

    def threads(self, limit: int) -> int:
        """`limit`, or 1 while the free cores are fewer than `needed`."""
        with self.lock:
            self._sample()
            return limit if self.free is None or self.free >= self.needed else 1

    def _sample(self) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last[0] < self.interval:
            return
        counters = self._counters()
        if counters is None:
            return
        busy, cpus = counters
        mine = time.process_time()
        if self.last is not None:
            wall = now - self.last[0]
            busy_cores = (busy - self.last[1]) / self.ticks / wall
            others = max(0.0, busy_cores - (mine - self.last[2]) / wall)
            self.free = cpus - others
        self.last = (now, busy, mine, cpus)

    def _counters(self) -> tuple[float, int] | None:
        """Jiffies the machine's CPUs spent busy, and how many CPUs there are."""
        try:
            with open(self.path, encoding="ascii") as file_:
                lines = file_.read().splitlines()
        except OSError:
            return None
        fields = [int(value) for value in lines[0].split()[1:9]]  # user .. steal
        idle = fields[3] + fields[4]  # idle, iowait
        cpus = sum(1 for line in lines[1:] if line.startswith("cpu"))
        return float(sum(fields) - idle), max(cpus, 1)


_monitor = CoreMonitor()


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
