"""`python -m spacy_bilstm_crf COMMAND ...`: the package's commands, `annotate` and `calibrate`."""

import argparse
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import spacy

from .annotate import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    ENGINES,
    AnnotateError,
    Interrupted,
    ShardReport,
    annotate,
)
from .annotate_engines import ignore_signal
from .annotate_io import FORMATS
from .calibration import (
    CalibrationError,
    bilstm_crf_component,
    bound_warnings,
    data_warnings,
    entity_outcomes,
    expected_calibration_error,
    fit_temperature,
    read_examples,
)
from .known_entities import training_keys

# The signals that stop `annotate` cleanly: Ctrl-C, and `kill`'s default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _add_annotate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "annotate",
        help="write the entities of a JSONL or Parquet dataset of texts, in shards",
        description=(
            "Annotate every row of INPUT (.jsonl/.json lines or .parquet) with the pipeline "
            "MODEL and write one record per row, {id, ents, error}, to OUTPUT/part-NNNNN.jsonl "
            "(or .parquet) plus OUTPUT/manifest.json, in input order. Ctrl-C (or SIGTERM) "
            "stops it, keeping the complete shards, and rerunning the same command resumes "
            "a stopped run. With --engine ray, it joins the cluster at RAY_ADDRESS if set, "
            "else starts a local one."
        ),
    )
    parser.add_argument("model", help="a pipeline folder or an installed pipeline package")
    parser.add_argument("input", help="a .jsonl/.json (JSON lines) or .parquet file")
    parser.add_argument("output", help="the output folder (created if missing)")
    parser.add_argument("--text-column", default="text", help="the texts' column (text)")
    parser.add_argument(
        "--id-column",
        help="the ids' column (default: id, and row numbers for rows without one); a column "
        "named here must be in the first rows",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--workers", type=int, default=1, help="nlp.pipe processes, or Ray actors (1)"
    )
    parser.add_argument("--engine", choices=ENGINES, default="local")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", dest="output_format")
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per output shard"
    )
    parser.add_argument(
        "--max-chars", type=int, default=None, help="longer texts are error rows (nlp.max_length)"
    )
    parser.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per Ray actor (0: one CPU each)"
    )
    parser.add_argument(
        "--confidence",
        action=argparse.BooleanOptionalAction,
        help="write each bilstm_crf entity's probability as its score (default: as the "
        "pipeline's config says)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="drop bilstm_crf entities whose probability is below this (0 to 1); turns "
        "--confidence on unless --no-confidence",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output of another run in OUTPUT"
    )
    parser.add_argument("--quiet", action="store_true", help="no line per shard written")
    parser.set_defaults(run=_run_annotate)


def _run_annotate(args: argparse.Namespace) -> None:
    def progress(report: ShardReport) -> None:
        print(
            f"{report.name}: {report.rows:,} rows, {report.errors:,} errors "
            f"({report.elapsed:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    with _signals_interrupt():
        summary = annotate(
            args.model,
            args.input,
            args.output,
            text_column=args.text_column,
            id_column=args.id_column,
            batch_size=args.batch_size,
            workers=args.workers,
            engine=args.engine,
            output_format=args.output_format,
            shard_size=args.shard_size,
            max_chars=args.max_chars,
            gpus_per_actor=args.gpus_per_actor,
            confidence=args.confidence,
            threshold=args.threshold,
            overwrite=args.overwrite,
            on_shard=None if args.quiet else progress,
        )
    print(summary)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Inside the block, the first SIGINT or SIGTERM raises `Interrupted` with its number and
    turns both off, so that a second Ctrl-C cannot break into the clean-up that follows. Once
    `Interrupted` leaves the block (after the clean-up), both are ignored outright: Python
    resets the handlers of Python functions to the default on its way out, and a late Ctrl-C
    would then kill the process instead of letting it exit with 130."""

    def stop(number: int, frame: FrameType | None) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, ignore_signal)
        raise Interrupted(number)

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    handlers = previous
    try:
        yield
    except Interrupted:
        handlers = dict.fromkeys(STOP_SIGNALS, signal.SIG_IGN)
        raise
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--component", default="ner", help="the bilstm_crf component (ner)")
    parser.add_argument(
        "--train",
        help="its training data, a .spacy file: for a pipeline saved before components kept "
        "the keys of their training entities",
    )
    parser.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> None:
    _check_calibrate_output(Path(args.output))
    try:
        nlp = spacy.load(args.model)
    except (OSError, ValueError) as error:
        raise CalibrationError(f"Cannot load the pipeline {args.model!r}: {error}") from None
    pipe = bilstm_crf_component(nlp, args.component)
    examples = read_examples(nlp, args.dev)
    if args.train is not None:
        pipe.cfg["known_entities"] = training_keys(read_examples(nlp, args.train))
    before = entity_outcomes(nlp, examples, args.component)
    if not len(before.probs):
        raise CalibrationError(
            f"The component {args.component!r} predicts no entities on {args.dev!r}: "
            "there is nothing to calibrate."
        )
    _warn(data_warnings(pipe, examples, before, args.dev))
    old = pipe.cfg["temperature"]
    temperature = fit_temperature(nlp, examples, args.component)
    _warn(bound_warnings(pipe))
    after = entity_outcomes(nlp, examples, args.component)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; a bad setting is one line, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m spacy_bilstm_crf")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_annotate(commands)
    _add_calibrate(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (AnnotateError, CalibrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
