"""A Ctrl-C at any moment of a command, the first seconds of imports included, ends it with
one line and exit code 130, never a traceback. Before the interpreter runs any of the
package's code (its own start-up, some 70 ms here) only Python itself can answer a Ctrl-C:
the first one is sent once a bare interpreter would have started."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import srsly

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "fixtures" / "sample_pipeline"
# Seconds after the interpreter's start-up: while Python imports torch and spaCy, while the
# pipeline loads, and while the command works.
DELAYS = (0.0, 0.3, 0.8, 1.5, 3.0)


def start_up() -> float:
    """Seconds a bare interpreter of this venv takes to start and exit (the slowest of 3)."""
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - begin)
    return max(times)


def commands(folder: Path) -> dict[str, list[str]]:
    pool = folder / "pool.jsonl"
    srsly.write_jsonl(pool, [{"id": i, "text": f"Ann met Bob in Rome {i} ."} for i in range(3000)])
    answers = folder / "answers.jsonl"
    srsly.write_jsonl(answers, [{"text": "Ann met Bob", "entities": [], "answer": "accept"}])
    return {
        "select": ["select", str(MODEL), str(pool), str(folder / "tasks.jsonl"), "--n", "5"],
        "annotate": ["annotate", str(MODEL), str(pool), str(folder / "out"), "--workers", "1"],
        "ingest": ["ingest", str(answers), str(folder / "r.spacy"), "--format", "jsonl"],
    }


@pytest.mark.parametrize("command", ["select", "annotate", "ingest"])
def test_an_early_ctrl_c_prints_no_traceback(tmp_path: Path, command: str) -> None:
    args = commands(tmp_path)[command]
    ready = start_up() + 0.05
    seen = []
    for delay in DELAYS:
        process = subprocess.Popen(
            [sys.executable, "-m", "spacy_bilstm_crf", *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(ready + delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err, (delay, err)
        if process.returncode != 0:  # it may have finished before the signal came
            assert process.returncode == 130, (delay, process.returncode, err)
            assert len(err.strip().splitlines()) == 1, (delay, err)
            seen.append(delay)
    assert seen and seen[0] == DELAYS[0]  # at least the Ctrl-C during the imports
