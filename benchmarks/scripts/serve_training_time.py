"""Seconds from `START_TRAINING` to the backend serving the new version, by answers.

    python benchmarks/scripts/serve_training_time.py MODEL TASKS.jsonl
        [--answers 50 500] [--train TRAIN.spacy] [--steps 300]

For each count, a backend (`python -m spacy_bilstm_crf serve MODEL --threads 1`, a new work
folder, `--retrain-every 0`: only when asked) gets that many answers as Label Studio's
`ANNOTATION_CREATED` webhooks (the gold entities of the first tasks of TASKS, written by
`label_studio_prepare.py`), then `START_TRAINING`; the clock runs from that webhook to the
first `/health` that names the new version: loading, `--steps` training steps (half of each
batch from TRAIN when given), writing the version and loading it for predictions.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    '<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/>'
    '<Label value="ORG"/><Label value="MISC"/></Labels><Text name="text" value="$text"/></View>'
)


def call(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def event(number: int, task: dict) -> dict:
    result = [
        {
            "type": "labels",
            "from_name": "label",
            "to_name": "text",
            "value": {"start": s, "end": e, "labels": [label]},
        }
        for s, e, label in task["entities"]
    ]
    annotation = {"id": number, "task": number, "result": result, "updated_at": str(number)}
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 1, "label_config": CONFIG},
        "task": {"id": number, "data": {"text": task["text"]}},
        "annotation": annotation,
    }


def measure(args: argparse.Namespace, tasks: list[dict], count: int, port: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="serve-training-"))
    command = [
        sys.executable,
        "-m",
        "spacy_bilstm_crf",
        "serve",
        str(args.model),
        "--port",
        str(port),
    ]
    command += ["--work", str(work), "--threads", "1", "--retrain-every", "0"]
    command += ["--steps", str(args.steps)] + (["--train", str(args.train)] if args.train else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                call(url, "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the backend did not start") from None
                time.sleep(0.5)
        for number, task in enumerate(tasks[:count], start=1):
            call(url, "/webhook", event(number, task))
        begin = time.perf_counter()
        call(url, "/webhook", {"action": "START_TRAINING", "project": {"id": 1}})
        while call(url, "/health")["model_version"] == "bilstm_crf-v0":
            time.sleep(0.2)
        return time.perf_counter() - begin
    finally:
        server.terminate()
        server.wait(120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("tasks", type=Path)
    parser.add_argument("--answers", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--train", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--port", type=int, default=19292)
    args = parser.parse_args(argv)
    lines = args.tasks.read_text(encoding="utf8").splitlines()
    tasks = [json.loads(line) for line in lines]
    print(
        f"START_TRAINING to the new version, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, 1 thread, {args.steps} steps, "
        f"training data mixed in: {args.train or 'none'}"
    )
    for count in args.answers:
        seconds = measure(args, tasks, count, args.port)
        words = sum(len(task["text"].split()) for task in tasks[:count])
        print(f"{count} answers ({words:,} words): {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
