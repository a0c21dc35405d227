"""The annotation loop's simulation as a table and a plot (from `active_learning.py` runs).

    python benchmarks/scripts/active_learning_report.py benchmarks/metrics/active/conll2003
        --title CoNLL-2003 --output benchmarks/metrics/active/conll2003.md
        --plot benchmarks/results/active_learning_conll2003.png

For each strategy, mean ± sd over seeds of the test F1 after each round, against two costs:
the share of the pool's tokens a person reviewed, and the share its tasks showed (a span
task shows its whole sentence: a person reads it). Against the full-data F1 (the `full`
runs: the same config and total steps on all the pool):

- the tokens to reach 97%, 99% and 100% of it: the first round from which the mean F1 stays
  at or above the line to the end of the run (a curve that touches it once and falls back
  has not reached it), reviewed and shown;
- the F1 at equal tokens shown, read off each curve between its rounds (linear);
- the area under the curve up to the last share every strategy reached, over the same width
  of the full-data line (1.0: full-data F1 from the first token); a strategy that stops
  finding uncertain units keeps its last F1 to the end, and the table says where it stopped.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

TARGETS = (0.97, 0.99, 1.0)
# Shares of the pool's tokens shown at which the strategies are compared.
SHOWN = (0.05, 0.1, 0.2, 0.3, 0.5)
NAMES = {
    "random": "random sentences",
    "sentence": "sentences by uncertainty (MNLP)",
    "sentence_lc": "sentences by 1 - P(best analysis)",
    "sentence_entropy": "sentences by token entropy",
    "span": "spans by uncertainty, partial labels",
    "sentence_repeats": "sentences by MNLP, repeated texts kept",
    "sentence_lc_repeats": "sentences by 1 - P(best analysis), repeated texts kept",
    "sentence_entropy_repeats": "sentences by token entropy, repeated texts kept",
    "span_repeats": "spans by uncertainty, repeated texts kept",
}


def read_runs(folder: Path, seeds: Sequence[int] | None = None) -> dict[str, list[list[dict]]]:
    """Per strategy, each seed's rounds, from `folder/STRATEGY-SEED/results.jsonl` (only the
    given seeds, so that a seed still running does not cut the others' curves)."""
    runs: dict[str, list[list[dict]]] = {}
    for results in sorted(folder.glob("*-*/results.jsonl")):
        if seeds is not None and int(results.parent.name.rsplit("-", 1)[1]) not in seeds:
            continue
        rounds = [json.loads(line) for line in results.read_text().splitlines() if line]
        if rounds:
            runs.setdefault(rounds[0]["strategy"], []).append(rounds)
    return runs


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class Point(NamedTuple):
    """A round, averaged over seeds: shares of the pool's tokens reviewed and shown, the test
    F1 (mean and sd, in %), sentences touched and tasks shown."""

    share: float
    f1: float
    sd: float
    sentences: float
    shown: float
    tasks: float


def curve(seeds: list[list[dict]]) -> list[Point]:
    """Per round present in every seed, the seeds' mean point."""
    rounds = min(len(rounds) for rounds in seeds)
    points = []
    for index in range(rounds):
        records = [rounds[index] for rounds in seeds]
        f1, sd = mean_sd([100 * record["test_f1"] for record in records])
        points.append(
            Point(
                statistics.mean(record["share"] for record in records),
                f1,
                sd,
                statistics.mean(record["sentences"] for record in records),
                statistics.mean(r["shown_tokens"] / r["pool_tokens"] for r in records),
                statistics.mean(record["tasks"] for record in records),
            )
        )
    return points


def reached_at(points: list[Point], level: float) -> Point | None:
    """The first round from which the mean F1 stays at or above `level` to the last round."""
    found = None
    for point in points:
        if point.f1 < level:
            found = None
        elif found is None:
            found = point
    return found


def tokens_to_reach(points: list[Point], level: float, pool: int) -> str:
    """`N (S%) / shown M%`: tokens reviewed at `reached_at`, and the share shown."""
    point = reached_at(points, level)
    if point is None:
        return "not reached"
    return f"{point.share * pool:,.0f} ({100 * point.share:.1f}%; shown {100 * point.shown:.1f}%)"


def stopped_at(points: list[Point]) -> Point | None:
    """The round after which the tokens reviewed stopped growing as the schedule asks (a
    round that adds less than half of what the first round added), if they did: the strategy
    found too little left to label."""
    gains = [after.share - before.share for before, after in zip(points, points[1:])]
    for point, gain in zip(points, gains):
        if gain < 0.5 * gains[0]:
            return point
    return None


def f1_at_shown(points: list[Point], shown: float) -> float | None:
    """The F1 at a share of tokens shown, linear between rounds; None outside the curve."""
    for before, after in zip(points, points[1:]):
        if before.shown <= shown <= after.shown:
            width = after.shown - before.shown
            weight = (shown - before.shown) / width if width > 0 else 1.0
            return before.f1 + weight * (after.f1 - before.f1)
    return points[-1].f1 if points and abs(points[-1].shown - shown) < 1e-9 else None


def area(points: list[Point], full: float, until: float) -> float:
    """Area under the F1 curve from 0 to `until` (trapezoids from the first round, the first
    round's F1 before it and the last one's after it), over `full * until`."""
    shares = [0.0] + [p.share for p in points if p.share <= until + 1e-9]
    f1s = [points[0].f1] + [p.f1 for p in points if p.share <= until + 1e-9]
    total = sum((b - a) * (fa + fb) / 2 for a, b, fa, fb in zip(shares, shares[1:], f1s, f1s[1:]))
    total += (until - shares[-1]) * f1s[-1]
    return total / (full * until) if full * until > 0 else float("nan")


def table(runs: dict[str, list[list[dict]]], title: str) -> list[str]:
    full_runs = runs.pop("full", [])
    if not full_runs:
        raise SystemExit("no full-data runs (strategy full): nothing to compare with")
    full, full_sd = mean_sd([100 * rounds[0]["test_f1"] for rounds in full_runs])
    pool = full_runs[0][0]["tokens"]
    steps = full_runs[0][0]["steps"]
    curves = {name: curve(seeds) for name, seeds in runs.items()}
    until = max(points[-1].share for points in curves.values())
    seeds = {name: len(seeds) for name, seeds in runs.items()}
    lines = [
        f"**{title}**: test F1 (mean ± sd over seeds: {seeds}) after each round, against the "
        f"share of the pool's {pool:,} tokens a person reviewed, and the share the tasks "
        f"showed. Full data, the same config and {steps:,} steps: **{full:.2f} ± "
        f"{full_sd:.2f}**. A share of the full F1 is reached at the first round from which "
        f"the mean stays at or above it. The area is over the curve to {100 * until:.0f}% of "
        "the tokens reviewed (a curve that ends sooner kept at its last F1), divided by the "
        "full-data F1 over the same width.",
        "",
        "| strategy | "
        + " | ".join(f"{int(100 * t)}% of full F1" for t in TARGETS)
        + f" | area to {100 * until:.0f}% | labels stop |",
        "| --- | " + " | ".join("---" for _ in TARGETS) + " | --- | --- |",
    ]
    for name, points in curves.items():
        reached = [tokens_to_reach(points, target * full, pool) for target in TARGETS]
        stop = stopped_at(points)
        where = "no" if stop is None else f"at {100 * stop.share:.1f}% reviewed"
        lines.append(
            f"| {NAMES.get(name, name)} | "
            + " | ".join(reached)
            + f" | {area(points, full, until):.3f} | {where} |"
        )
    lines += _equal_shown(curves)
    lines += ["", "| round | " + " | ".join(NAMES.get(n, n) for n in curves) + " |"]
    lines.append("| --- | " + " | ".join("---" for _ in curves) + " |")
    longest = max(len(points) for points in curves.values())
    for index in range(longest):
        cells = []
        for points in curves.values():
            if index < len(points):
                p = points[index]
                cells.append(
                    f"{p.f1:.2f} ± {p.sd:.2f} ({100 * p.share:.1f}% reviewed, "
                    f"{100 * p.shown:.1f}% shown in {p.tasks:,.0f} tasks)"
                )
            else:
                cells.append("")
        lines.append(f"| round {index} | " + " | ".join(cells) + " |")
    return lines


def _equal_shown(curves: dict[str, list[Point]]) -> list[str]:
    """The F1 of every strategy at the same shares of tokens shown."""
    widest = max(points[-1].shown for points in curves.values())
    levels = [level for level in SHOWN if level <= widest + 1e-9]
    lines = [
        "",
        "At equal tokens shown (test F1, read between rounds; '-': the curve does not reach it):",
        "",
        "| strategy | " + " | ".join(f"{int(100 * level)}% shown" for level in levels) + " |",
        "| --- | " + " | ".join("---" for _ in levels) + " |",
    ]
    for name, points in curves.items():
        cells = [f1_at_shown(points, level) for level in levels]
        lines.append(
            f"| {NAMES.get(name, name)} | "
            + " | ".join("-" if cell is None else f"{cell:.2f}" for cell in cells)
            + " |"
        )
    return lines


def plot(runs: dict[str, list[list[dict]]], full: float, title: str, output: Path) -> None:
    """Learning curves, F1 against the share of tokens reviewed (left) and shown (right),
    with the full-data F1 as a line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    reviewed, shown = figure.subplots(1, 2, sharey=True)
    for name, seeds in runs.items():
        points = curve(seeds)
        f1s, sds = [p.f1 for p in points], [p.sd for p in points]
        for axes, xs in ((reviewed, [p.share for p in points]), (shown, [p.shown for p in points])):
            axes.errorbar(
                [100 * x for x in xs],
                f1s,
                yerr=sds,
                marker="o",
                markersize=3,
                capsize=2,
                label=NAMES.get(name, name),
            )
    for axes, what in ((reviewed, "reviewed"), (shown, "shown to the person")):
        axes.axhline(full, color="black", linestyle="--", linewidth=1, label="full data")
        axes.axhline(0.97 * full, color="grey", linestyle=":", linewidth=1, label="97% of full")
        axes.set_xlabel(f"tokens {what} (% of the pool)")
        axes.grid(alpha=0.3)
    reviewed.set_ylabel("test F1")
    reviewed.set_title(title)
    shown.legend(loc="lower right")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the folder of the runs' folders")
    parser.add_argument("--title", default="")
    parser.add_argument("--output", type=Path, help="write the Markdown table here too")
    parser.add_argument("--plot", type=Path, help="draw the learning curves to this PNG")
    parser.add_argument(
        "--strategies", nargs="+", help="the runs to show, by name (default: all; full always)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="the seeds to read (default: all)")
    args = parser.parse_args(argv)
    runs = read_runs(args.runs, args.seeds)
    if args.strategies:
        runs = {name: seeds for name, seeds in runs.items() if name in {*args.strategies, "full"}}
    title = args.title or args.runs.name
    lines = table(dict(runs), title)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    if args.plot is not None:
        full = statistics.mean(100 * rounds[0]["test_f1"] for rounds in runs["full"])
        plot({k: v for k, v in runs.items() if k != "full"}, full, title, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
