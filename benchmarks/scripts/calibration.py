"""Calibration report for a trained `bilstm_crf` pipeline, as Markdown and plots.

    python benchmarks/scripts/calibration.py MODEL DEV.spacy TEST.spacy --output-dir DIR
        [--component ner] [--threads N] [--train TRAIN.spacy]

It measures, with `spacy_bilstm_crf.calibration`: the raw expected calibration error (ECE, 15
bins) and Brier score of the predicted entities on dev and test, overall and per label (raw:
temperature 1); the temperatures fitted on dev only (one for all entities, one each for
entities seen in training and new ones); the same on test with one and with two; a
reliability diagram of test before and after (DIR/reliability.png); precision, recall and F1
by threshold on test after calibration, with its curve (DIR/pr_curve.png); the n-best oracle
F1 on test; and the words per second of `nlp.pipe` on the test texts with confidence off,
on, and with nbest 10, interleaved over 3 rounds in one process. It prints the report and
writes it to DIR/calibration.md, with the targets marked met or missed.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy
import spacy
import torch
from matplotlib.figure import Figure

from spacy_bilstm_crf.calibration import (
    CalibrationError,
    Outcomes,
    bilstm_crf_component,
    brier_score,
    entity_outcomes,
    expected_calibration_error,
    fit_temperature,
    oracle_f1,
    per_label,
    precision_recall_at,
    read_examples,
    reliability,
)
from spacy_bilstm_crf.pipeline.known_entities import training_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402

BINS = 15
THRESHOLDS = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
KS = [1, 2, 5, 10]
ROUNDS = 3
# Targets: ECE after calibration, oracle F1 of 10 analyses, slowdown of confidence.
TARGET_ECE, TARGET_ORACLE, TARGET_SLOWDOWN = 0.02, 97.0, 1.3
SPEED_SETTINGS = {
    "confidence off": {"confidence": False, "nbest": 0},
    "confidence on": {"confidence": True, "nbest": 0},
    "nbest 10": {"confidence": False, "nbest": 10},
}


def calibration_rows(name: str, outcomes: Outcomes) -> list[str]:
    """Table rows: ECE and Brier score overall and per label."""
    ece = per_label(outcomes, expected_calibration_error)
    brier = per_label(outcomes, brier_score)
    rows = [
        f"| {name} | all | {len(outcomes.probs):,} | {outcomes.correct.mean():.3f} | "
        f"{expected_calibration_error(outcomes.probs, outcomes.correct, BINS):.4f} | "
        f"{brier_score(outcomes.probs, outcomes.correct):.4f} |"
    ]
    for label in ece:
        chosen = outcomes.labels == label
        rows.append(
            f"| {name} | {label} | {int(chosen.sum()):,} | {outcomes.correct[chosen].mean():.3f} "
            f"| {ece[label]:.4f} | {brier[label]:.4f} |"
        )
    return rows


def plot_reliability(before: Outcomes, after: Outcomes, fitted: str, path: Path) -> None:
    """Accuracy against mean probability per bin, before and after calibration."""
    figure = Figure(figsize=(10, 4.6))  # no pyplot: no GUI backend is needed
    for axes, outcomes, title in zip(
        figure.subplots(1, 2),
        (before, after),
        ("raw (T = 1)", f"calibrated ({fitted})"),
    ):
        table = reliability(outcomes.probs, outcomes.correct, BINS)
        centers = (table.edges[:-1] + table.edges[1:]) / 2
        filled = table.counts > 0
        axes.bar(
            centers[filled],
            table.accuracy[filled],
            width=1 / BINS,
            edgecolor="black",
            alpha=0.7,
            label="accuracy",
        )
        axes.plot(table.confidence[filled], table.accuracy[filled], "o", color="C3", ms=4)
        axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ece = expected_calibration_error(outcomes.probs, outcomes.correct, BINS)
        axes.set_title(f"{title}: ECE {ece:.4f}")
        axes.set_xlabel("entity probability")
        axes.set_ylabel("fraction correct")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_pr_curve(curve: list, marked: list, path: Path) -> None:
    """Precision against recall as the threshold rises, the table's thresholds marked."""
    figure = Figure(figsize=(5.5, 4.6))
    axes = figure.subplots()
    axes.plot([row.recall for row in curve], [row.precision for row in curve], color="C0")
    for row in marked:
        axes.plot(row.recall, row.precision, "o", color="C3", ms=4)
        axes.annotate(f"{row.threshold:g}", (row.recall, row.precision), fontsize=8)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("test, after calibration: threshold on entity probability")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def words_per_second(nlp: spacy.Language, component: str, texts: list[str]) -> dict[str, float]:
    """Median words per second of `nlp.pipe(texts)` per setting, the settings taking turns in
    each of `ROUNDS` rounds (after one pass to warm up), so that machine noise hits all."""
    pipe = bilstm_crf_component(nlp, component)
    saved = {key: pipe.cfg[key] for key in ("confidence", "nbest")}
    words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))
    timings: dict[str, list[float]] = {name: [] for name in SPEED_SETTINGS}
    try:
        list(nlp.pipe(texts))
        for round_ in range(ROUNDS):
            names = list(SPEED_SETTINGS)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                pipe.cfg.update(SPEED_SETTINGS[name])
                start = time.perf_counter()
                for _ in nlp.pipe(texts):
                    pass
                timings[name].append(words / (time.perf_counter() - start))
    finally:
        pipe.cfg.update(saved)
    return {name: statistics.median(values) for name, values in timings.items()}


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a trained pipeline folder or package")
    parser.add_argument("dev", type=Path, help="held-out .spacy data to fit the temperature on")
    parser.add_argument("test", type=Path, help=".spacy data to report on")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--component", default="ner", help="the bilstm_crf component (ner)")
    parser.add_argument(
        "--train",
        type=Path,
        help="the training .spacy data, for a pipeline saved before components kept the keys "
        "of their training entities",
    )
    parser.add_argument(
        "--threads", type=int, help="the component's threads setting (default: as saved)"
    )
    args = parser.parse_args(argv)
    try:
        nlp = spacy.load(args.model)
        pipe = bilstm_crf_component(nlp, args.component)
        dev, test = read_examples(nlp, args.dev), read_examples(nlp, args.test)
        if args.train is not None:
            pipe.cfg["known_entities"] = training_keys(read_examples(nlp, args.train))
    except (CalibrationError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        pipe.cfg["threads"] = args.threads
    args.output_dir.mkdir(parents=True, exist_ok=True)
    saved_temperature = pipe.cfg["temperature"]
    pipe.cfg.update(temperature=1.0, seen_temperature=None, unseen_temperature=None)
    raw_dev = entity_outcomes(nlp, dev, args.component)
    raw_test = entity_outcomes(nlp, test, args.component)
    temperature = fit_temperature(nlp, dev, args.component)
    seen, unseen = pipe.cfg["seen_temperature"], pipe.cfg["unseen_temperature"]
    cal_dev = entity_outcomes(nlp, dev, args.component)
    cal_test = entity_outcomes(nlp, test, args.component)
    pipe.cfg.update(seen_temperature=None, unseen_temperature=None)
    one_dev = entity_outcomes(nlp, dev, args.component)
    one_test = entity_outcomes(nlp, test, args.component)
    pipe.cfg.update(seen_temperature=seen, unseen_temperature=unseen)
    fitted = f"T = {temperature:.3f}"
    if seen is not None:
        fitted = f"T = {seen:.3f} seen, {unseen:.3f} new"
    plot_reliability(raw_test, cal_test, fitted, args.output_dir / "reliability.png")
    curve_thresholds = sorted(set(numpy.round(numpy.linspace(0, 0.995, 200), 4)) | set(THRESHOLDS))
    curve = precision_recall_at(nlp, test, curve_thresholds, args.component)
    table = [row for row in curve if row.threshold in THRESHOLDS]
    plot_pr_curve(curve, table, args.output_dir / "pr_curve.png")
    oracle = oracle_f1(nlp, test, KS, args.component)
    sentence_oracle = oracle_f1(nlp, test, KS, args.component, unit="sentence")
    speed = words_per_second(nlp, args.component, [eg.reference.text for eg in test])

    ece_raw = expected_calibration_error(raw_test.probs, raw_test.correct, BINS)
    ece_after = expected_calibration_error(cal_test.probs, cal_test.correct, BINS)
    slowdown = speed["confidence off"] / speed["confidence on"]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Calibration of `{args.model}` ({args.component})",
        "",
        f"{date}; {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, component threads {pipe.cfg['threads']}; "
        f"spaCy {spacy.__version__}. Dev: {args.dev} ({len(dev)} docs), test: {args.test} "
        f"({len(test)} docs, {sum(len(eg.reference.ents) for eg in test):,} gold entities). "
        f"The saved temperature was {saved_temperature:g}; raw numbers use 1.",
        "",
        f"## Calibration (ECE with {BINS} equal bins, the last one holding 1.0)",
        "",
        f"Temperature fitted on dev (log loss): **{temperature:.3f}** for all entities; "
        + (
            f"**{seen:.3f}** for entities among the training entities and **{unseen:.3f}** "
            "for new ones, which the component uses. "
            if seen is not None
            else "the component knows no training entities, so it uses that one. "
        )
        + f"New entities: {1 - raw_dev.known.mean():.1%} of the predicted ones on dev, "
        f"{1 - raw_test.known.mean():.1%} on test.",
        "",
        "| data | label | entities | accuracy | ECE | Brier |",
        "|---|---|---:|---:|---:|---:|",
        *calibration_rows("dev, raw", raw_dev),
        *calibration_rows("test, raw", raw_test),
        *calibration_rows("dev, one temperature (fit data)", one_dev),
        *calibration_rows("test, one temperature", one_test),
        *calibration_rows("dev, calibrated (fit data)", cal_dev),
        *calibration_rows("test, calibrated", cal_test),
        "",
        "Reliability diagram (test): `reliability.png`.",
        "",
        "## Precision and recall by threshold (test, calibrated)",
        "",
        "| threshold | entities kept | precision | recall | F1 |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {row.threshold:g} | {row.entities:,} | {100 * row.precision:.2f} | "
            f"{100 * row.recall:.2f} | {100 * row.f1:.2f} |"
            for row in table
        ),
        "",
        "Curve over 200 thresholds: `pr_curve.png`.",
        "",
        "## n-best oracle F1 (test)",
        "",
        "Per gold sentence, the best (fewest errors) of the first k analyses: of its doc "
        "(`nbest_unit` doc), or of the sentence itself (`nbest_unit` sentence, the docs given "
        "the gold sentence boundaries), as NCRF++ reports its oracle.",
        "",
        "| k | " + " | ".join(str(k) for k in KS) + " |",
        "|---|" + "---:|" * len(KS),
        "| oracle F1, doc analyses | "
        + " | ".join(f"{100 * oracle[k].fscore:.2f}" for k in KS)
        + " |",
        "| oracle F1, sentence analyses | "
        + " | ".join(f"{100 * sentence_oracle[k].fscore:.2f}" for k in KS)
        + " |",
        "",
        f"## Speed (test texts, median words/s of {ROUNDS} interleaved rounds)",
        "",
        "| setting | words/s | relative to confidence off |",
        "|---|---:|---:|",
        *(
            f"| {name} | {value:,.0f} | {value / speed['confidence off']:.2f} |"
            for name, value in speed.items()
        ),
        "",
        "## Targets (CoNLL-2003 test, default config)",
        "",
        "| target | value | |",
        "|---|---:|---|",
        f"| ECE after calibration <= {TARGET_ECE} (raw {ece_raw:.4f}) | {ece_after:.4f} "
        f"| {verdict(ece_after <= TARGET_ECE)} |",
        f"| oracle F1 of 10 sentence analyses >= {TARGET_ORACLE:g} "
        f"| {100 * sentence_oracle[10].fscore:.2f} "
        f"| {verdict(100 * sentence_oracle[10].fscore >= TARGET_ORACLE)} |",
        f"| confidence within {TARGET_SLOWDOWN}x of the words/s without it | {slowdown:.2f}x "
        f"| {verdict(slowdown <= TARGET_SLOWDOWN)} |",
    ]
    report = "\n".join(lines) + "\n"
    (args.output_dir / "calibration.md").write_text(report, encoding="utf-8")
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
