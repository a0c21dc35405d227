"""Run a command with a fixed number of CPU threads and record its wall time as JSON.

spaCy's CLI has no option for either. `compare.py` reads the training time from this JSON.

    python scripts/timed_run.py --threads 2 --output metrics/train.json -- python -m spacy train ...

The thread count goes to the child process as OMP_NUM_THREADS, MKL_NUM_THREADS and
OPENBLAS_NUM_THREADS, which torch and numpy read at startup. Torch uses every core by default.
On a busy machine, more threads than free cores can make each training step many times
slower. A leading `python` runs as this interpreter, as `spacy project run` does.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def run_timed(command: Sequence[str], threads: int) -> tuple[int, float]:
    """Run `command` with `threads` CPU threads; return its exit status and wall time (s)."""
    if not command:
        raise ValueError("no command to run")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    argv = list(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    start = time.perf_counter()
    status = subprocess.run(argv, env=env, check=False).returncode
    return status, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the command's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, required=True, help="CPU threads for the command")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        status, seconds = run_timed(command, args.threads)
    except (ValueError, OSError) as err:
        print(f"timed_run: {err}", file=sys.stderr)
        return 2
    if status != 0:
        print(f"timed_run: the command failed with exit status {status}", file=sys.stderr)
        return status
    record = {
        "command": command,
        "seconds": round(seconds, 2),
        "threads": args.threads,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"timed_run: {seconds:.1f} s with {args.threads} thread(s), written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
