"""Run a command with a fixed number of CPU threads and record its wall time as JSON.

spaCy's CLI has no option for either. `compare.py` reads the training time from this JSON.

    python scripts/timed_run.py --threads 2 --output metrics/train.json -- python -m spacy train ...

With `--budget SECONDS` (0: none), a command still running at the deadline gets SIGINT
(Ctrl+C), as a user stopping `spacy train` by hand: spaCy then saves `model-last`, and
`model-best` is the best checkpoint evaluated so far. Such a run counts as a success,
recorded as `"stopped": true`.

The thread count goes to the child process as OMP_NUM_THREADS, MKL_NUM_THREADS and
OPENBLAS_NUM_THREADS, which torch and numpy read at startup. Torch uses every core by default.
On a busy machine, more threads than free cores can make each training step many times
slower. A leading `python` runs as this interpreter, as `spacy project run` does.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Seconds an interrupted command gets to save its state before it is killed.
GRACE_SECONDS = 120


def _default_sigint() -> None:
    """In the child: take SIGINT as Ctrl+C even when this script runs in the background of a
    non-interactive shell, which starts its jobs with SIGINT ignored (and exec keeps that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Run:
    """How a timed command ended."""

    status: int
    seconds: float
    stopped: bool = False


def run_timed(command: Sequence[str], threads: int, budget: float | None = None) -> Run:
    """Run `command` with `threads` CPU threads, interrupting it after `budget` seconds."""
    if not command:
        raise ValueError("no command to run")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be 0 (none) or positive, got {budget}")
    budget = budget or None
    argv = list(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, preexec_fn=_default_sigint)
    try:
        status = process.wait(timeout=budget)
        return Run(status, time.perf_counter() - start)
    except subprocess.TimeoutExpired:
        seconds = time.perf_counter() - start
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return Run(0, seconds, stopped=True)


def write_record(
    path: Path, command: Sequence[str], run: Run, threads: int, budget: float | None
) -> None:
    """The run as JSON: the command, its wall time, threads, budget, whether the budget
    stopped it, and when it finished."""
    record = {
        "command": list(command),
        "seconds": round(run.seconds, 2),
        "threads": threads,
        "budget": budget,
        "stopped": run.stopped,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the command's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, required=True, help="CPU threads for the command")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds before SIGINT (0: none)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        run = run_timed(command, args.threads, args.budget)
    except (ValueError, OSError) as err:
        print(f"timed_run: {err}", file=sys.stderr)
        return 2
    if run.status != 0:
        print(f"timed_run: the command failed with exit status {run.status}", file=sys.stderr)
        return run.status
    write_record(args.output, command, run, args.threads, args.budget)
    print(f"timed_run: {run.seconds:.1f} s with {args.threads} thread(s), written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
