"""`python -m spacy_bilstm_crf calibrate`: fit the temperatures of a component's entity
probabilities on dev data, after checking the output path, with warnings on data that cannot
support the fit."""

import argparse
import os
import sys
from pathlib import Path

import spacy

from ..calibration import (
    CalibrationError,
    bilstm_crf_component,
    bound_warnings,
    data_warnings,
    entity_outcomes,
    expected_calibration_error,
    fit_temperature,
    read_examples,
)
from ..pipeline.known_entities import training_keys


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="fit the temperature of a bilstm_crf component's entity probabilities",
        description=(
            "Fit the temperature that makes the entity probabilities of the bilstm_crf "
            "component of MODEL match how often its entities are right on DEV (and one each "
            "for entities seen among its training entities and new ones), print the "
            "expected calibration error (ECE) before and after on DEV, and write the pipeline "
            "with that temperature to OUTPUT. Entities do not change, only their probabilities."
        ),
    )
    parser.add_argument("model", help="a pipeline folder or an installed pipeline package")
    parser.add_argument("dev", help="held-out gold data, a .spacy file (not the training data)")
    parser.add_argument(
        "output",
        help="the folder to write the calibrated pipeline to: new, empty, or a pipeline "
        "folder to replace",
    )
    parser.add_argument(
        "--component", help="the bilstm_crf component, when the pipeline has several"
    )
    parser.add_argument(
        "--train",
        help="its training data, a .spacy file: for a pipeline saved before components kept "
        "the keys of their training entities",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    _check_calibrate_output(Path(args.output))
    try:
        nlp = spacy.load(args.model)
    except (OSError, ValueError) as error:
        raise CalibrationError(f"Cannot load the pipeline {args.model!r}: {error}") from None
    pipe = bilstm_crf_component(nlp, args.component)
    examples = read_examples(nlp, args.dev)
    if args.train is not None:
        pipe.cfg["known_entities"] = training_keys(read_examples(nlp, args.train))
    before = entity_outcomes(nlp, examples, pipe.name)
    if not len(before.probs):
        raise CalibrationError(
            f"The component {pipe.name!r} predicts no entities on {args.dev!r}: "
            "there is nothing to calibrate."
        )
    _warn(data_warnings(pipe, examples, before, args.dev))
    old = pipe.cfg["temperature"]
    temperature = fit_temperature(nlp, examples, pipe.name)
    _warn(bound_warnings(pipe))
    after = entity_outcomes(nlp, examples, pipe.name)
    ece_before = expected_calibration_error(before.probs, before.correct)
    ece_after = expected_calibration_error(after.probs, after.correct)
    print(f"entities predicted on dev: {len(before.probs):,} ({before.correct.mean():.1%} right)")
    print(f"temperature: {old:.3f} -> {temperature:.3f}")
    if pipe.cfg["seen_temperature"] is not None:
        seen, unseen = pipe.cfg["seen_temperature"], pipe.cfg["unseen_temperature"]
        print(
            f"entity temperatures: {seen:.3f} for training entities ({after.known.mean():.1%} "
            f"of these), {unseen:.3f} for new ones"
        )
    print(f"ECE on dev: {ece_before:.4f} -> {ece_after:.4f} (the fit's own data)")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    nlp.to_disk(args.output)
    print(f"wrote {args.output}")


def _check_calibrate_output(output: Path) -> None:
    """Refuse, before any work, an output that calibrate cannot or should not write a pipeline
    to: a file, a folder that holds other things than a spaCy pipeline (a pipeline folder is
    replaced, as `nlp.to_disk` does), or a place that cannot be written."""
    if output.exists() and not output.is_dir():
        raise CalibrationError(
            f"The output {str(output)!r} is a file: name a folder for the calibrated pipeline."
        )
    if output.is_dir():
        names = sorted(path.name for path in output.iterdir())
        if names and not (output / "config.cfg").is_file():
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise CalibrationError(
                f"The output folder {str(output)!r} holds other files ({shown}) and no spaCy "
                "pipeline: name a new or empty folder, or a pipeline folder to replace."
            )
    existing = next(folder for folder in (output, *output.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CalibrationError(
            f"Cannot write the output {str(output)!r}: {str(existing)!r} is not a folder "
            "this user can write to."
        )


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
