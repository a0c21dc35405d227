"""The tagger's default threads follow the machine: two while a second core is free, one
while other jobs hold the cores (where a second thread only waits for its core)."""

import multiprocessing
import os
import time
from pathlib import Path

from spacy_bilstm_crf.nn.parallel import CoreMonitor


def stat(path: Path, busy: int, idle: int) -> None:
    """A /proc/stat of a 2-CPU machine whose CPUs spent `busy` and `idle` jiffies in all."""
    path.write_text(
        f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"
        "cpu1 0 0 0 0 0 0 0 0 0 0\nintr 0\n"
    )


def test_a_second_thread_only_while_other_jobs_leave_a_core_free(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    monitor = CoreMonitor(interval=0.0, needed=1.5, path=str(path))
    stat(path, 1000, 1000)
    assert monitor.threads(2) == 2  # nothing known yet: as many as allowed
    begin = time.monotonic()
    time.sleep(0.3)
    ticks = monitor.ticks * (time.monotonic() - begin)
    stat(path, int(1000 + 2 * ticks), 1000)  # both CPUs busy all along, not with this process
    assert monitor.threads(2) == 1 and monitor.free < 0.5
    begin = time.monotonic()
    time.sleep(0.3)
    ticks = monitor.ticks * (time.monotonic() - begin)
    stat(path, int(1000 + 2.4 * ticks), int(1000 + 1.6 * ticks))  # others use 0.2 of a core
    assert monitor.threads(2) == 2 and 1.5 <= monitor.free <= 2.0
    assert monitor.threads(1) == 1


def test_no_counters_means_every_core_counts(tmp_path: Path) -> None:
    monitor = CoreMonitor(interval=0.0, path=str(tmp_path / "absent"))
    assert monitor.threads(2) == 2 and monitor.threads(2) == 2 and monitor.free is None


def _spin() -> None:
    while True:
        sum(i * i for i in range(10_000))


def test_cores_held_by_other_processes_give_one_thread() -> None:
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 2)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(1.0)
        monitor = CoreMonitor(interval=0.0)
        monitor.threads(2)
        time.sleep(0.5)
        assert monitor.threads(2) == 1, monitor.free
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
