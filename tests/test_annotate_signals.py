"""The annotate command stopped by signals, in real subprocesses: Ctrl-C (SIGINT to the whole
process group, as a terminal sends it) with one worker and with two, two Ctrl-Cs in quick
succession, and SIGTERM to the main process only. Each run exits at once with 130 or 143 and
one line on stderr, keeps its complete shards and leaves no process behind; rerunning
resumes, to the output of an uninterrupted run. Workers also end when the main process is
killed, or when one of them fails."""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import spacy
import srsly
import torch
from spacy.training import Example

from spacy_bilstm_crf.annotate import AnnotateError, annotate
from spacy_bilstm_crf.annotate.local import WorkerPool
from spacy_bilstm_crf.annotate.shards import MANIFEST

TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]
# No entity scores: the outputs of different runs are then equal byte for byte.
SMALL_MODEL = {
    "model": {"hidden_width": 32, "tok2vec": {"rows": [500, 200, 200, 200], "char_width": 8}},
}
# Enough shards that a run is far from done when the test stops it, few enough rows that the
# runs take little more than their start-up.
ROWS = 10_000
SHARD = 250
# Complete shards that a run writes before the test stops it.
BEFORE_SIGNAL = 2
# Generous on a busy machine; a hang used to last minutes.
EXIT_SECONDS = 10
PROGRESS = re.compile(r"part-\d{5}\.jsonl: [\d,]+ rows, [\d,]+ errors \([\d.]+ s\)")
# Python's multiprocessing resource tracker (a process of its own, sharing stderr) now and then
# warns, after the run has exited, that a queue's semaphore it was to clean up is already gone.
TRACKER = re.compile(r".*resource_tracker.*")
STOPPED = re.compile(
    r"interrupted: ([\d,]+) of the input's rows done \((\d+) complete shards? in (.+)\); "
    r"run the same command again to resume"
)

# One worker runs this file's tests, so that its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("annotate_signals")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signals")


@pytest.fixture(scope="module")
def model_dir(folder: Path) -> Path:
    """A tiny pipeline overfit on TRAIN_DATA, saved to disk."""
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config=SMALL_MODEL)
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(40):
        nlp.update(examples, sgd=optimizer)
    nlp.to_disk(folder / "model")
    return folder / "model"


@pytest.fixture(scope="module")
def source(folder: Path) -> Path:
    texts = [text for text, _ in TRAIN_DATA]
    rows = [{"id": f"r{i}", "text": f"{texts[i % 4]} {i}"} for i in range(ROWS)]
    srsly.write_jsonl(folder / "in.jsonl", rows)
    return folder / "in.jsonl"


@pytest.fixture(scope="module")
def whole(model_dir: Path, source: Path, folder: Path) -> Path:
    """An uninterrupted run's output (one worker, in this process)."""
    annotate(model_dir, source, folder / "whole", shard_size=SHARD)
    return folder / "whole"


def command(model_dir: Path, source: Path, out: Path, workers: int) -> list[str]:
    return [
        *(sys.executable, "-m", "spacy_bilstm_crf", "annotate"),
        *(str(model_dir), str(source), str(out)),
        *("--workers", str(workers), "--shard-size", str(SHARD)),
    ]


def session_processes(session: int) -> list[str]:
    """The live processes of a session, as `pid (name) state`: zombies are dead, only
    waiting for a parent to read their exit status (here pid 1 may never do so)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[: stat.rindex(")") + 1], stat[stat.rindex(")") + 2 :].split()
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            found.append(f"{name} {state}")
    return found


def stop_run(args: list[str], send: Callable[[int], None]) -> tuple[int, float, list[str]]:
    """Start `args` in a session of its own, call `send(pid)` once BEFORE_SIGNAL more shards
    are complete, and wait: the exit code, the seconds from the signal to the exit, and the
    lines on stderr. Checks that no process of the session is left a moment later."""
    run = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        while sum(bool(PROGRESS.fullmatch(line)) for line in lines) < BEFORE_SIGNAL:
            line = run.stderr.readline()
            assert line, f"the run ended before the signal: {lines}"
            lines.append(line.rstrip("\n"))
        sent = time.monotonic()
        send(run.pid)
        code = run.wait(timeout=60)
        seconds = time.monotonic() - sent
        lines += run.stderr.read().splitlines()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    deadline = time.monotonic() + 5
    while session_processes(run.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(run.pid) == [], "processes left behind"
    return code, seconds, lines


def check_stopped(code: int, seconds: float, lines: list[str], out: Path, exit_code: int) -> int:
    """The run exited with `exit_code` within EXIT_SECONDS; besides progress lines, stderr has
    exactly the interrupted line, whose counts are the manifest's. Returns the shards done."""
    assert code == exit_code, lines
    assert seconds < EXIT_SECONDS
    others = [line for line in lines if not (PROGRESS.fullmatch(line) or TRACKER.fullmatch(line))]
    assert len(others) == 1, others
    match = STOPPED.fullmatch(others[0])
    assert match, others
    shards = srsly.read_json(out / MANIFEST)["shards"]
    assert int(match[1].replace(",", "")) == sum(shard["rows"] for shard in shards.values())
    assert int(match[2]) == len(shards) >= BEFORE_SIGNAL
    assert match[3] == str(out)
    return len(shards)


def same_shards(out: Path, whole: Path) -> None:
    """Every complete shard of `out` equals the uninterrupted run's, byte for byte."""
    for name in srsly.read_json(out / MANIFEST)["shards"]:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def ctrl_c(pid: int) -> None:
    os.killpg(pid, signal.SIGINT)


def ctrl_c_twice(pid: int) -> None:
    os.killpg(pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(pid, signal.SIGINT)


def terminate(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# Each step stops a rerun of the step before: workers, how it is stopped, the exit code.
STEPS = [(1, ctrl_c, 130), (2, ctrl_c, 130), (2, ctrl_c_twice, 130), (2, terminate, 143)]


def test_interrupted_runs_stop_cleanly_and_resume(model_dir, source, whole, folder) -> None:
    """The STEPS, one after the other on one output, and SIGKILL; then a last rerun completes
    it, equal to `whole`, and its summary gives the totals of the whole dataset."""
    out = folder / "out"
    done = 0
    for workers, send, exit_code in STEPS:
        stopped = stop_run(command(model_dir, source, out, workers), send)
        shards = check_stopped(*stopped, out, exit_code)
        assert shards >= done + BEFORE_SIGNAL, (send, workers)  # resumed, and kept its work
        same_shards(out, whole)
        done = shards
    # SIGKILL leaves no chance to clean up: the workers notice that their parent is gone.
    code, _, _ = stop_run(command(model_dir, source, out, workers=2), kill)
    assert code == -signal.SIGKILL
    same_shards(out, whole)
    done = len(srsly.read_json(out / MANIFEST)["shards"])
    args = command(model_dir, source, out, workers=1)  # quicker to start; the same output
    final = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    names = sorted(path.name for path in whole.iterdir())
    assert sorted(path.name for path in out.iterdir()) == names
    for name in names:
        if name != MANIFEST:
            assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    total = ROWS // SHARD
    earlier = f"{done * SHARD:,} rows (0 errors) in {done} shards from earlier runs"
    now = f"{ROWS - done * SHARD:,} rows (0 errors) in {total - done} shards written now"
    assert final.stdout.startswith(f"{ROWS:,} rows (0 errors) in {total} shards in {out}: ")
    assert f": {earlier}, {now}, " in final.stdout


def test_a_worker_that_fails_stops_the_pool() -> None:
    """A worker's error reaches the main process as itself, and no worker is left."""
    pool = WorkerPool(1, ("no_such_pipeline", 1_000, 8, None))
    try:
        pool.start()
        with pytest.raises(AnnotateError, match="Cannot load the pipeline 'no_such_pipeline'"):
            list(pool.results(iter(["Berlin"]), 8))
    finally:
        pool.stop()
    assert [process.is_alive() for process in pool.processes] == [False]
