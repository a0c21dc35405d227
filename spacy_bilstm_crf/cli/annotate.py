"""`python -m spacy_bilstm_crf annotate`: the batch annotator, stopped cleanly by Ctrl-C or
SIGTERM (one line, exit 130 or 143, the complete shards kept for a rerun to resume)."""

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ..annotate import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    ENGINES,
    FORMATS,
    Interrupted,
    ShardReport,
    annotate,
)
from ..annotate.local import ignore_signal

# The signals that stop `annotate` cleanly: Ctrl-C, and `kill`'s default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add(commands: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
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
