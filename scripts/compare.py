"""Write a Markdown table that compares trained NER pipelines on one dataset.

    python scripts/compare.py METRICS_DIR TRAINING_DIR --systems bilstm_crf ner --output OUT.md

Systems whose test scores are missing (not trained, such as spaCy's accuracy recipe without
vectors) are left out with a note. For each SYSTEM it reads the files that project.yml writes:

- METRICS_DIR/SYSTEM.json: `spacy evaluate` on the test set (P, R, F1, per-type F1)
- METRICS_DIR/SYSTEM-speed.json: scripts/speed.py (words per second, peak memory, machine)
- METRICS_DIR/SYSTEM-train.json: scripts/timed_run.py around `spacy train` (wall time)
- TRAINING_DIR/SYSTEM/model-best: the trained pipeline (size on disk, step budget)
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacy.util import load_config


@dataclass
class Result:
    """What the table shows for one system."""

    name: str
    scores: dict[str, Any]
    speed: dict[str, Any]
    train_seconds: float
    train_threads: int | None
    size_bytes: int
    max_steps: int
    vectors: str


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the command that writes it first")
    return json.loads(path.read_text(encoding="utf-8"))


def directory_size(path: Path) -> int:
    """Total size in bytes of the files under `path`."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def load_result(name: str, metrics_dir: Path, training_dir: Path) -> Result:
    """Collect one system's files (see the module docstring)."""
    model = training_dir / name / "model-best"
    config = load_config(model / "config.cfg")
    train = _read_json(metrics_dir / f"{name}-train.json")
    vectors_cfg = model / "vocab" / "vectors.cfg"
    shape = _read_json(vectors_cfg).get("shape") if vectors_cfg.is_file() else None
    rows, width = shape if shape else (0, 0)
    return Result(
        name=name,
        scores=_read_json(metrics_dir / f"{name}.json"),
        speed=_read_json(metrics_dir / f"{name}-speed.json"),
        train_seconds=float(train["seconds"]),
        train_threads=train.get("threads"),
        size_bytes=directory_size(model),
        max_steps=int(config["training"]["max_steps"]),
        vectors=f"{rows:,} x {width}" if rows else "none",
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def markdown_table(results: Sequence[Result], title: str, vectors: str | None = None) -> str:
    """The comparison as Markdown: a header line, then one row per system."""
    types = sorted({label for r in results for label in r.scores.get("ents_per_type") or {}})
    first = results[0].speed
    header = (
        f"**{title}** test set: {first['cpu']}, {first['threads']} torch thread(s), "
        f"{first['date'][:10]}. F1, P and R in %, per-type columns are F1. "
        f"Speed: `nlp.pipe` on the test texts, median of {len(first['runs_words_per_second'])} "
        f"runs. Training: wall time of `spacy train` (at most {results[0].max_steps} steps, "
        "best dev checkpoint kept). Inputs: `bilstm_crf` and `ner` (configs/ner.cfg) read the "
        "same features and vectors"
        + (f" (`{vectors}`)" if vectors else "")
        + "; `spacy_efficiency` and `spacy_accuracy` are spaCy's `init config` recipes, the "
        "first without vectors, the second with the same vectors; the vectors column is the "
        "table in each pipeline."
    )
    columns = ["system", "vectors", "F1", "P", "R", *(f"F1 {t}" for t in types)]
    columns += ["words/s", "peak RSS", "training time", "model size"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in results:
        per_type = r.scores.get("ents_per_type") or {}
        cells = [f"`{r.name}`", r.vectors]
        cells += [_percent(r.scores.get(key)) for key in ("ents_f", "ents_p", "ents_r")]
        cells += [_percent(per_type.get(t, {}).get("f")) for t in types]
        cells += [
            f"{r.speed['words_per_second']:,}",
            f"{r.speed['peak_rss_mb']:,.0f} MB",
            _duration(r.train_seconds),
            f"{r.size_bytes / 1e6:.1f} MB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    steps = {r.name: r.max_steps for r in results}
    if len(set(steps.values())) > 1:
        lines += ["", f"Note: the step budgets differ: {steps}."]
    speed_threads = {r.name: r.speed["threads"] for r in results}
    train_threads = {r.name: r.train_threads for r in results}
    if len(set(speed_threads.values())) > 1 or len(set(train_threads.values())) > 1:
        lines += [
            "",
            f"Note: the thread counts differ: speed {speed_threads}, training {train_threads}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_dir", type=Path, help="folder with the metrics JSON files")
    parser.add_argument("training_dir", type=Path, help="folder with SYSTEM/model-best")
    parser.add_argument("--systems", nargs="+", required=True, help="system names, in order")
    parser.add_argument("--title", default=None, help="dataset name for the header line")
    parser.add_argument("--vectors", default=None, help="the vectors source, for the header")
    parser.add_argument("--output", type=Path, required=True, help="Markdown file to write")
    args = parser.parse_args(argv)
    present = [name for name in args.systems if (args.metrics_dir / f"{name}.json").is_file()]
    if not present:
        print(f"error: no test scores in {args.metrics_dir} for {args.systems}", file=sys.stderr)
        return 1
    try:
        results = [load_result(name, args.metrics_dir, args.training_dir) for name in present]
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    table = markdown_table(results, args.title or args.metrics_dir.name, args.vectors)
    missing = [name for name in args.systems if name not in present]
    if missing:
        table += f"\nNot trained (no test scores): {', '.join(missing)}.\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
