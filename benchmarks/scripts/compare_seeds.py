"""Compare NER systems over several seeds at the same wall-clock budget, in one run.

    python scripts/compare_seeds.py corpus/conll2003 metrics/conll2003/seeds.md \
        --system bilstm_crf=configs/bilstm_crf.cfg --system ner=configs/ner.cfg \
        --seeds 0 1 2 --seeds-of ner=0 --threads 2 --budget 1200

For each seed, every system trains in turn (so that slow phases of a shared machine hit all
systems alike), one run at a time, with `--threads` CPU threads and at most `--budget`
seconds: a run still going then is interrupted and keeps its best checkpoint. Each
`model-best` is scored on dev and test, and `speed.py` measures `nlp.pipe` words per second
and peak memory on the test texts in a process of its own; both are recorded in the run's
folder, so that a rerun (with more seeds or systems) only trains and scores what is missing.
`--seeds-of NAME=0,1` gives one system its own seeds (the benchmarks train spaCy's recipes
with one). The Markdown table has the mean and standard deviation over each system's seeds.
"""

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from seed_runs import SCORES, SCRIPTS, Score, mean_sd, score, train, write_lines
from speed import cpu_model


def system_arg(value: str) -> tuple[str, Path]:
    """`NAME=CONFIG` -> (NAME, CONFIG)."""
    name, sep, config = value.partition("=")
    if not sep or not name or not config:
        raise argparse.ArgumentTypeError(f"expected NAME=CONFIG, got {value!r}")
    return name, Path(config)


def setting_arg(value: str) -> tuple[str, str, str]:
    """`NAME:KEY=VALUE` -> (NAME, KEY, VALUE): a config override for one system."""
    name, sep, setting = value.partition(":")
    key, eq, setting_value = setting.partition("=")
    if not sep or not eq or not name or not key:
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=VALUE, got {value!r}")
    return name, key, setting_value


def seeds_arg(value: str) -> tuple[str, list[int]]:
    """`NAME=0,1,2` -> (NAME, [0, 1, 2]): the seeds of one system."""
    name, sep, seeds = value.partition("=")
    try:
        numbers = [int(seed) for seed in seeds.split(",")]
    except ValueError:
        numbers = []
    if not sep or not name or not numbers:
        raise argparse.ArgumentTypeError(f"expected NAME=SEED[,SEED...], got {value!r}")
    return name, numbers


def measure_speed(model: Path, data: Path, threads: int, output: Path) -> dict:
    """Run speed.py in a fresh process, so that its peak memory is this pipeline's alone."""
    command = [sys.executable, str(SCRIPTS / "speed.py"), str(model), str(data)]
    command += ["--threads", str(threads), "--output", str(output)]
    subprocess.run(command, check=True)
    return json.loads(output.read_text(encoding="utf8"))


def evaluate(folder: Path, corpus: Path, threads: int) -> tuple[Score, Score, dict]:
    """Dev and test scores and the speed of `folder/model-best`, recorded in the folder the
    first time and read back after (training the run again removes the records)."""
    record, speed_record = folder / SCORES, folder / "speed.json"
    if record.exists() and speed_record.exists():
        saved = json.loads(record.read_text(encoding="utf8"))
        speed = json.loads(speed_record.read_text(encoding="utf8"))
        return Score(**saved["dev"]), Score(**saved["test"]), speed
    nlp = spacy.load(folder / "model-best")
    dev = score(nlp, corpus / "dev.spacy")
    test = score(nlp, corpus / "test.spacy")
    speed = measure_speed(folder / "model-best", corpus / "test.spacy", threads, speed_record)
    saved = {"dev": dataclasses.asdict(dev), "test": dataclasses.asdict(test)}
    record.write_text(json.dumps(saved), encoding="utf8")
    return dev, test, speed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="folder with train/dev/test.spacy")
    parser.add_argument("output", type=Path, help="Markdown table to write")
    parser.add_argument("--system", type=system_arg, action="append", required=True)
    parser.add_argument(
        "--set",
        type=setting_arg,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="config override for one system, e.g. bilstm_crf:paths.vectors=corpus/x/vectors",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--seeds-of",
        type=seeds_arg,
        action="append",
        default=[],
        metavar="NAME=SEED[,SEED...]",
        help="seeds of one system instead of --seeds, e.g. spacy_accuracy=0",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, required=True, help="training seconds per run")
    parser.add_argument("--steps", type=int, default=None, help="max_steps for every system")
    parser.add_argument("--training-dir", type=Path, default=Path("training/seeds"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    names = [name for name, _ in args.system]
    overrides: dict[str, dict[str, str]] = {name: {} for name in names}
    for name, key, value in args.set:
        if name not in overrides:
            parser.error(f"--set names {name!r}, which is not a --system ({', '.join(names)})")
        overrides[name][key] = value
    seeds = {name: args.seeds for name in names}
    for name, own in args.seeds_of:
        if name not in seeds:
            parser.error(f"--seeds-of names {name!r}, which is not a --system ({', '.join(names)})")
        seeds[name] = own
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for seed in sorted({seed for own in seeds.values() for seed in own}):
        for name, config in args.system:
            if seed not in seeds[name]:
                continue
            folder = args.training_dir / name / str(seed)
            seconds, stopped = train(
                config,
                args.corpus,
                folder,
                seed,
                args.threads,
                overrides[name],
                steps=args.steps,
                budget=args.budget,
            )
            dev, test, speed = evaluate(folder, args.corpus, args.threads)
            results[name].append(
                {"seconds": seconds, "stopped": stopped, "dev": dev, "test": test, "speed": speed}
            )
            print(
                f"{name} seed {seed}: dev {dev.f:.4f} test {test.f:.4f} "
                f"{speed['words_per_second']:,} words/s, {seconds / 60:.1f} min",
                flush=True,
            )
    configs = dict(args.system)
    inputs = {
        name: f"`{configs[name].name}`, "
        + (
            f"`{overrides[name]['paths.vectors']}`"
            if "paths.vectors" in overrides[name]
            else "none"
        )
        for name in names
    }
    labels = sorted(
        {label for runs in results.values() for r in runs for label in r["test"].per_type}
    )
    rows = []
    for name, runs in results.items():
        per_type = [mean_sd([r["test"].per_type.get(label, 0.0) for r in runs]) for label in labels]
        rows.append(
            " | ".join(
                [
                    f"| {name}",
                    inputs[name],
                    mean_sd([r["dev"].f for r in runs]),
                    mean_sd([r["test"].f for r in runs]),
                    *per_type,
                    f"{statistics.mean(r['speed']['words_per_second'] for r in runs):,.0f}",
                    f"{statistics.mean(r['speed']['peak_rss_mb'] for r in runs):,.0f} MB",
                    f"{statistics.mean(r['seconds'] for r in runs) / 60:.1f} min "
                    f"({sum(r['stopped'] for r in runs)}/{len(runs)} at the budget) |",
                ]
            )
        )
    date = datetime.now(timezone.utc).date().isoformat()
    seeds_note = "".join(f" ({name}: {own})" for name, own in seeds.items() if own != args.seeds)
    header = ["system", "config, vectors", "dev F1", "test F1"]
    header += [f"test {label}" for label in labels]
    header += ["words/s", "peak RSS", "training"]
    lines = [
        f"## {args.title or args.corpus.name}",
        "",
        f"`{args.corpus}`, seeds {args.seeds}{seeds_note}, budget {args.budget / 60:g} min "
        f"per run, {args.threads} thread(s), {cpu_model()} ({platform.machine()}), {date}; "
        "one run at a time. Mean ± standard deviation over seeds; words/s is `nlp.pipe` over "
        "the test texts, measured after each run.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *rows,
    ]
    write_lines(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
