"""The annotation loop's simulation as a table and a plot (from `active_learning.py` runs).

    python benchmarks/scripts/active_learning_report.py benchmarks/metrics/active/conll2003
        --title CoNLL-2003 --output benchmarks/metrics/active/conll2003.md
        --plot benchmarks/results/active_learning_conll2003.png

For each strategy, mean ± sd over seeds of the test F1 after each round, against the share of
the pool's tokens reviewed; the tokens needed to reach 97%, 99% and 100% of the full-data F1
(the `full` runs: the same config and total steps on all the pool), taken at the first round
whose mean F1 reaches it; and the area under the curve up to the last share every strategy
reached, over the same width of the full-data line (1.0: full-data F1 from the first token);
a strategy that stops finding uncertain units before that keeps its last F1 to the end.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

TARGETS = (0.97, 0.99, 1.0)
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


def read_runs(folder: Path) -> dict[str, list[list[dict]]]:
    """Per strategy, each seed's rounds, from `folder/STRATEGY-SEED/results.jsonl`."""
    runs: dict[str, list[list[dict]]] = {}
    for results in sorted(folder.glob("*-*/results.jsonl")):
        rounds = [json.loads(line) for line in results.read_text().splitlines() if line]
        if rounds:
            runs.setdefault(rounds[0]["strategy"], []).append(rounds)
    return runs


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def curve(seeds: list[list[dict]]) -> list[tuple[float, float, float, float]]:
    """Per round present in every seed: mean share of tokens, mean and sd of the F1 (in %),
    and mean sentences touched."""
    rounds = min(len(rounds) for rounds in seeds)
    points = []
    for index in range(rounds):
        records = [rounds[index] for rounds in seeds]
        share = statistics.mean(record["share"] for record in records)
        f1, sd = mean_sd([100 * record["test_f1"] for record in records])
        sentences = statistics.mean(record["sentences"] for record in records)
        points.append((share, f1, sd, sentences))
    return points


def tokens_to_reach(points: list[tuple], level: float, pool: int) -> str:
    """`N (S%)`: the tokens of the first round whose mean F1 reaches `level`, or `-`."""
    for share, f1, _, _ in points:
        if f1 >= level:
            return f"{share * pool:,.0f} ({100 * share:.1f}%)"
    return "not reached"


def area(points: list[tuple], full: float, until: float) -> float:
    """Area under the F1 curve from 0 to `until` (trapezoids from the first round, the first
    round's F1 before it and the last one's after it), over `full * until`."""
    shares = [0.0] + [share for share, *_ in points if share <= until + 1e-9]
    f1s = [points[0][1]] + [f1 for share, f1, *_ in points if share <= until + 1e-9]
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
    until = max(points[-1][0] for points in curves.values())
    seeds = {name: len(seeds) for name, seeds in runs.items()}
    lines = [
        f"**{title}**: test F1 (mean ± sd over seeds: {seeds}) after each round, against the "
        f"share of the pool's {pool:,} tokens a person reviewed. Full data, the same config and "
        f"{steps:,} steps: **{full:.2f} ± {full_sd:.2f}**. The area is over the curve to "
        f"{100 * until:.0f}% of the tokens (a curve that ends sooner kept at its last F1), "
        "divided by the full-data F1 over the same width.",
        "",
        "| strategy | "
        + " | ".join(f"{int(100 * t)}% of full F1" for t in TARGETS)
        + f" | area to {100 * until:.0f}% |",
        "| --- | " + " | ".join("---" for _ in TARGETS) + " | --- |",
    ]
    for name, points in curves.items():
        reached = [tokens_to_reach(points, target * full, pool) for target in TARGETS]
        lines.append(
            f"| {NAMES.get(name, name)} | "
            + " | ".join(reached)
            + f" | {area(points, full, until):.3f} |"
        )
    lines += ["", "| share of tokens | " + " | ".join(NAMES.get(n, n) for n in curves) + " |"]
    lines.append("| --- | " + " | ".join("---" for _ in curves) + " |")
    longest = max(len(points) for points in curves.values())
    for index in range(longest):
        cells = []
        for points in curves.values():
            if index < len(points):
                share, f1, sd, sentences = points[index]
                cells.append(f"{f1:.2f} ± {sd:.2f} ({100 * share:.1f}%, {sentences:,.0f} sent.)")
            else:
                cells.append("")
        lines.append(f"| round {index} | " + " | ".join(cells) + " |")
    return lines


def plot(runs: dict[str, list[list[dict]]], full: float, title: str, output: Path) -> None:
    """Learning curves, F1 against the share of tokens, with the full-data F1 as a line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for name, seeds in runs.items():
        points = curve(seeds)
        shares = [100 * share for share, *_ in points]
        f1s = [f1 for _, f1, _, _ in points]
        sds = [sd for _, _, sd, _ in points]
        axes.errorbar(
            shares, f1s, yerr=sds, marker="o", markersize=3, capsize=2, label=NAMES.get(name, name)
        )
    axes.axhline(full, color="black", linestyle="--", linewidth=1, label="full data")
    axes.axhline(0.97 * full, color="grey", linestyle=":", linewidth=1, label="97% of full")
    axes.set_xlabel("tokens reviewed (% of the pool)")
    axes.set_ylabel("test F1")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
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
    args = parser.parse_args(argv)
    runs = read_runs(args.runs)
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
