"""A labelling session simulated through a real Label Studio, the gold labels as the person.

    python benchmarks/scripts/label_studio_session.py MODEL DATA OUTPUT
        [--modes frozen learning] [--retrain-every 50] [--steps 300] [--block 50]

DATA is `label_studio_prepare.py`'s folder: `tasks.jsonl` (texts and gold entities) and
`train.spacy` (MODEL's training data, mixed into each retraining). For each mode, the backend
(`python -m spacy_bilstm_crf serve`, one thread) is connected to a new Label Studio project
and the tasks are labelled in order, as a person in the labelling stream would:

1. the task's prediction is retrieved through Label Studio (the data manager's action, which
   calls the backend's /setup and /predict) from the version the backend serves then;
2. the person fixes the first error in reading order, one action per entity-level fix, as
   in `correction_propagation.py`: remove a spurious entity, add a missing one, relabel one,
   move its boundaries (a wrong span with a wrong label costs both); after each action the
   text is re-decoded through Label Studio's interactive-annotating API under every fix so
   far (the fixed entities, the removed regions and what a moved boundary left, and what
   was read before the fix: right as it is);
3. the gold answer is submitted through Label Studio, whose webhook reaches the backend.

`learning`: the backend retrains every `--retrain-every` answers; the session waits for the
new version at the end of each block of that many tasks (a person takes longer than a round
of training to label 50 texts). `frozen`: the same backend with `--no-training`. `none` (no
pre-annotation: every gold entity is one action) is counted from the tasks. Writes
`OUTPUT/MODE.jsonl` (per task: actions with re-decoding, without it for the same prediction,
the version used), `OUTPUT/session.md` (actions per task per block) and `OUTPUT/session.png`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import label_studio_app
from correction_propagation import Ent, cost, first_error, static_actions

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("PER", "LOC", "ORG", "MISC")
CONFIG = (
    '<View><Labels name="label" toName="text">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + '</Labels><Text name="text" value="$text" granularity="word"/></View>'
)


def context(
    text: str, gold: set[Ent], read: int, fixed: set[Ent], outside: set[tuple[int, int]]
) -> dict:
    """The fixes so far as Label Studio regions: entities fixed or read (gold before `read`),
    and the characters known to be in no entity (read, removed, left by a moved boundary),
    as regions that touch words and no entity."""
    entities = fixed | {g for g in gold if g[1] <= read}
    covered = [False] * len(text)
    for start, end, _ in entities:
        covered[start:end] = [True] * (end - start)
    none = [False] * len(text)
    for start, end in {(0, read)} | outside:
        none[start:end] = [True] * (end - start)
    regions, start = [], None
    for i in range(len(text) + 1):
        inside = i < len(text) and none[i] and not covered[i]
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            piece = text[start:i]
            begin, end = (
                start + len(piece) - len(piece.lstrip()),
                i - (len(piece) - len(piece.rstrip())),
            )
            if begin < end:
                regions.append({"start": begin, "end": end})
            start = None
    result = [
        {
            "type": "labels",
            "from_name": "label",
            "to_name": "text",
            "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]},
        }
        for s, e, label in sorted(entities)
    ]
    return {"result": result, "outside": regions}


def entities_of(result: list[dict]) -> set[Ent]:
    return {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result}


def correct(
    app: label_studio_app.LabelStudio,
    backend: int,
    task: int,
    text: str,
    pred: set[Ent],
    gold: set[Ent],
) -> int:
    """Actions to bring `pred` to `gold`, re-decoding through Label Studio after each."""
    fixed: set[Ent] = set()
    outside: set[tuple[int, int]] = set()
    actions, read, limit = 0, 0, 3 * (len(gold) + len(pred)) + 10
    while (error := first_error(pred, gold)) is not None and actions < limit:
        start, p, g = error
        read = max(read, start)
        actions += cost(p, g)
        if g is None:
            outside.add(p[:2])
        else:
            fixed.add(g)
        if p is not None and g is not None:  # what a moved boundary leaves is in no entity
            outside |= {
                (i, i + 1) for i in range(p[0], p[1]) if not any(s <= i < e for s, e, _ in gold)
            }
        answer = app.interactive(backend, task, context(text, gold, read, fixed, outside))
        if "errors" in answer:
            raise RuntimeError(f"task {task}: {answer['errors']}")
        pred = entities_of(answer["data"]["result"])
    return actions


def backend_health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        return json.loads(response.read())


def run_mode(
    mode: str, args: argparse.Namespace, app: label_studio_app.LabelStudio, tasks: list[dict]
) -> list[dict]:
    port = label_studio_app.free_port()
    url = f"http://127.0.0.1:{port}"
    work = args.output / f"{mode}-work"
    command = [
        sys.executable,
        "-m",
        "spacy_bilstm_crf",
        "serve",
        str(args.model),
        "--port",
        str(port),
    ]
    command += ["--work", str(work), "--threads", "1", "--steps", str(args.steps)]
    command += [
        "--retrain-every",
        str(args.retrain_every),
        "--train",
        str(args.data / "train.spacy"),
    ]
    command += ["--no-training"] if mode == "frozen" else []
    log = open(args.output / f"{mode}-backend.log", "w")  # noqa: SIM115
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    records = []
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                backend_health(url)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the backend did not start: {log.name}") from None
                time.sleep(1)
        project = app.create_project(f"session {mode}", CONFIG)
        backend = app.connect_backend(project, url, interactive=True)["id"]
        ids = app.import_tasks(project, [{"text": task["text"]} for task in tasks])
        for number, (task_id, task) in enumerate(zip(ids, tasks), start=1):
            begin = time.perf_counter()
            text, gold = task["text"], {tuple(e) for e in task["entities"]}
            app.retrieve_predictions(project, [task_id])
            prediction = max(app.predictions(task_id), key=lambda p: p["id"])
            pred = entities_of(prediction["result"])
            actions = correct(app, backend, task_id, text, pred, gold)
            result = [
                {
                    "type": "labels",
                    "from_name": "label",
                    "to_name": "text",
                    "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]},
                }
                for s, e, label in sorted(gold)
            ]
            app.annotate(task_id, result)
            records.append(
                {
                    "task": number,
                    "actions": actions,
                    "static": static_actions(pred, gold),
                    "gold": len(gold),
                    "version": prediction["model_version"],
                    "seconds": round(time.perf_counter() - begin, 2),
                }
            )
            with (args.output / f"{mode}.partial.jsonl").open("a") as file_:
                file_.write(json.dumps(records[-1]) + "\n")
            if mode == "learning" and number % args.retrain_every == 0 and number < len(tasks):
                want = f"bilstm_crf-v{number // args.retrain_every}"
                deadline = time.monotonic() + 3600
                while backend_health(url)["model_version"] != want and time.monotonic() < deadline:
                    time.sleep(2)
            if number % args.block == 0:
                mean = sum(r["actions"] for r in records[-args.block :]) / args.block
                print(
                    f"{mode}: {number} tasks, last block {mean:.2f} actions/task",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(120)
        log.close()
    rounds = backend_health_rounds(work)
    (args.output / f"{mode}-rounds.json").write_text(json.dumps(rounds, indent=1))
    return records


def backend_health_rounds(work: Path) -> list[dict]:
    """The trained versions' records (answers, steps, seconds), from their folders."""
    return [json.loads(path.read_text()) for path in sorted(work.glob("versions/*/version.json"))]


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    blocks = (len(next(iter(runs.values()))) + args.block - 1) // args.block
    header = "| tasks | " + " | ".join(runs) + " |"
    lines = [header, "|" + " --- |" * (len(runs) + 1)]
    means: dict[str, list[float]] = {mode: [] for mode in runs}
    for b in range(blocks):
        row = [f"{b * args.block + 1}-{(b + 1) * args.block}"]
        for mode, records in runs.items():
            block = records[b * args.block : (b + 1) * args.block]
            means[mode].append(sum(r["actions"] for r in block) / len(block))
            row.append(f"{means[mode][-1]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    total = ["all"] + [
        f"{sum(r['actions'] for r in records) / len(records):.2f}" for records in runs.values()
    ]
    lines.append("| " + " | ".join(total) + " |")
    when = time.strftime("%Y-%m-%d")
    text = f"Actions per task, {when}, {platform.machine()}, 1 thread\n\n" + "\n".join(lines) + "\n"
    (args.output / "session.md").write_text(text)
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.4), dpi=100)
    x = [(b + 1) * args.block for b in range(blocks)]
    for mode, values in means.items():
        axis.plot(x, values, marker="o", label=mode)
    axis.set_xlabel("tasks labelled")
    axis.set_ylabel(f"actions per task (block of {args.block})")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.plot)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument(
        "--modes", nargs="+", choices=["learning", "frozen"], default=["frozen", "learning"]
    )
    parser.add_argument("--retrain-every", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--plot", type=Path, default=Path("results/label_studio_session.png"))
    parser.add_argument("--report-only", action="store_true", help="the table and plot only")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    lines = (args.data / "tasks.jsonl").read_text(encoding="utf8").splitlines()
    tasks = [json.loads(line) for line in lines][: args.tasks]
    runs = {}
    if not args.report_only:
        with label_studio_app.running(args.output / "label_studio") as app:
            for mode in args.modes:
                path = args.output / f"{mode}.jsonl"
                if path.exists():
                    continue
                (args.output / f"{mode}.partial.jsonl").unlink(missing_ok=True)
                records = run_mode(mode, args, app, tasks)
                path.write_text("".join(json.dumps(r) + "\n" for r in records))
    for mode in args.modes:  # a run stopped early reports the blocks it finished
        for name in (f"{mode}.jsonl", f"{mode}.partial.jsonl"):
            if (args.output / name).exists():
                lines = (args.output / name).read_text().splitlines()
                runs[mode] = [json.loads(line) for line in lines]
                break
    if not runs:
        raise SystemExit(f"nothing to report in {args.output}")
    done = min(len(records) for records in runs.values()) // args.block * args.block
    runs = {mode: records[:done] for mode, records in runs.items()}
    runs["none"] = [{"actions": len(task["entities"])} for task in tasks[:done]]
    report(args, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
