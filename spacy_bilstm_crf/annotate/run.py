"""Annotate a dataset of texts with a trained pipeline, in resumable shards, locally or on Ray.

`annotate(model, input, output)` reads JSONL or Parquet rows, runs the good texts through
`nlp.pipe` (engine "local": this process or worker processes) or Ray Data actors (engine
"ray"), and writes one record per input row, `{"id", "ents", "error"}`, to
`output/part-00000.jsonl`, ... (or `.parquet`) plus `manifest.json`. Each entity has
`start_char`, `end_char`, `label`, and `score` when a `bilstm_crf` component has `confidence`
on (None for entities set by other components).

Order: output rows follow input rows; shard `i` holds input rows
`[i * shard_size, (i + 1) * shard_size)`, in order. Rows that cannot be annotated keep their
place, with `ents: []` and the reason in `error`. A rerun skips the shards the manifest lists
as complete, so a killed run resumes where it stopped; a rerun with another input or other
settings is refused unless told to overwrite. An interrupted run (Ctrl-C, or SIGTERM from the
command line) stops its workers and raises `Interrupted`, which says how far it got.

Run `python -m spacy_bilstm_crf annotate MODEL INPUT OUTPUT [options]`.
"""

import contextlib
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spacy
from spacy.util import minibatch

from .local import local_engine
from .ray_engine import ray_engine, require_ray
from .records import Annotated, Shard, load_pipeline, score_keys
from .rows import AnnotateError, Row, check_input, read_rows, require_pyarrow
from .shards import FORMATS, Manifest, input_fingerprint, shard_name, write_shard

ENGINES = ("local", "ray")
DEFAULT_ID_COLUMN = "id"
DEFAULT_BATCH_SIZE = 256
DEFAULT_SHARD_SIZE = 10_000

__all__ = ["AnnotateError", "Interrupted", "ShardReport", "Summary", "annotate"]


@dataclass(frozen=True)
class ShardReport:
    """One shard written: its name, rows, error rows, words, and seconds since the start."""

    name: str
    index: int
    rows: int
    errors: int
    words: int
    elapsed: float


@dataclass
class Summary:
    """What a run did: rows, error rows and words written, shards written, the time; and the
    complete shards it found from earlier runs (skipped), with their rows and error rows."""

    output: Path
    rows: int = 0
    errors: int = 0
    words: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    first_shard_seconds: float | None = None
    earlier_rows: int = 0
    earlier_errors: int = 0

    @property
    def total_rows(self) -> int:
        """Rows in the output's complete shards, from this run and earlier ones."""
        return self.earlier_rows + self.rows

    @property
    def total_errors(self) -> int:
        return self.earlier_errors + self.errors

    @property
    def total_shards(self) -> int:
        return self.shards_skipped + self.shards_written

    @property
    def texts_per_second(self) -> float:
        return (self.rows - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        """The dataset's totals, then what this run did (and what earlier runs did)."""
        total = (
            f"{self.total_rows:,} rows ({self.total_errors:,} errors) in "
            f"{_count(self.total_shards, 'shard')} in {self.output}"
        )
        speed = (
            f"{self.seconds:.1f} s, {self.texts_per_second:,.0f} texts/s, "
            f"{self.words_per_second:,.0f} words/s"
        )
        if not self.shards_skipped:
            return f"{total}: {speed}"
        earlier = (
            f"{self.earlier_rows:,} rows ({self.earlier_errors:,} errors) in "
            f"{_count(self.shards_skipped, 'shard')} from earlier runs"
        )
        now = (
            f"{self.rows:,} rows ({self.errors:,} errors) in "
            f"{_count(self.shards_written, 'shard')} written now"
        )
        return f"{total}: {earlier}, {now}, {speed}"


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM; its message says how far it got.

    The command line's signal handlers raise it with the signal's number, and `annotate`
    raises it again with its `Summary` (None before the output folder was opened), after its
    workers have stopped. `exit_code` is the shell's 128 + the signal's number.
    """

    def __init__(self, signal_number: int = signal.SIGINT, summary: Summary | None = None):
        super().__init__(signal_number, summary)
        self.signal_number = signal_number
        self.summary = summary

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number

    def __str__(self) -> str:
        again = "run the same command again to resume"
        if self.summary is None:  # before the output was opened, or after the run's end
            return f"interrupted; {again}"
        shards = _count(self.summary.total_shards, "complete shard")
        return (
            f"interrupted: {self.summary.total_rows:,} of the input's rows done "
            f"({shards} in {self.summary.output}); {again}"
        )


def annotate(
    model: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    engine: str = "local",
    output_format: str = "jsonl",
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_chars: int | None = None,
    gpus_per_actor: float = 0.0,
    confidence: bool | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    on_shard: Callable[[ShardReport], None] | None = None,
) -> Summary:
    """Annotate every row of `input_path` with the pipeline `model` into `output_dir`.

    `model`: a pipeline folder or an installed package, for `spacy.load` (with Ray on a
    cluster, a folder at the same path on every node, or a package installed on each).
    `id_column`: the ids' field; by default "id", or the row number where a row has none (a
    column named here must be in the first rows). `workers`: processes that each load the
    pipeline once and run `nlp.pipe` (local; more than one are spawned, so a script calling
    this needs `if __name__ == "__main__":`), or Ray actors (one CPU each, or
    `gpus_per_actor` GPUs). `max_chars`: longer texts are error rows (default: the
    pipeline's `nlp.max_length`). `confidence`, `threshold`: set on the pipeline's
    `bilstm_crf` components when given (a threshold turns confidence on unless it is False).
    `on_shard` is called after each shard is written.

    Raises `AnnotateError` on bad settings, before any work, and `Interrupted` (a
    KeyboardInterrupt) when interrupted, once the workers have stopped; the complete shards
    are kept, and a rerun resumes.
    """
    start = time.perf_counter()
    _check_settings(
        batch_size, workers, shard_size, max_chars, engine, output_format, gpus_per_actor
    )
    pipe_settings = _pipe_settings(confidence, threshold)
    summary: Summary | None = None
    try:
        input_path, output_dir = Path(input_path), Path(output_dir)
        kind = check_input(input_path, text_column, id_column)
        if output_format == "parquet":
            require_pyarrow("Parquet output")
        if engine == "ray":
            require_ray()
        model = str(Path(model).resolve()) if Path(model).is_dir() else str(model)
        nlp = load_pipeline(model, max_chars, settings=pipe_settings)
        max_chars = max_chars or nlp.max_length
        settings = _run_settings(
            model, text_column, id_column, output_format, shard_size, max_chars, pipe_settings
        )
        manifest = Manifest.open(output_dir, input_fingerprint(input_path), settings, overwrite)
        summary = Summary(output_dir)
        scored = bool(score_keys(nlp))
        rows = read_rows(input_path, kind, text_column, settings["id_column"], max_chars)
        shards = _pending(rows, shard_size, output_format, manifest, summary)
        common = {"batch_size": batch_size, "workers": workers, "max_chars": max_chars}
        if engine == "local":
            done = local_engine(nlp, shards, model=model, settings=pipe_settings, **common)
        else:
            del nlp  # the actors load their own
            done = ray_engine(
                model, shards, gpus_per_actor=gpus_per_actor, settings=pipe_settings, **common
            )
        with contextlib.closing(done):  # an interrupted engine stops its workers first
            for annotated in done:
                with _signals_held():
                    report = _write(annotated, output_dir, output_format, scored, manifest, start)
                    _add(summary, report)
                if on_shard is not None:
                    on_shard(report)
        manifest.finish()
        summary.seconds = time.perf_counter() - start
        return summary
    except KeyboardInterrupt as error:
        raise Interrupted(getattr(error, "signal_number", signal.SIGINT), summary) from None


def _run_settings(
    model: str,
    text_column: str,
    id_column: str | None,
    output_format: str,
    shard_size: int,
    max_chars: int,
    pipe_settings: dict[str, Any],
) -> dict[str, Any]:
    """The settings that change the output, for the manifest: a rerun with others is refused."""
    return {
        **_model_identity(model),
        "text_column": text_column,
        "id_column": id_column or DEFAULT_ID_COLUMN,
        "format": output_format,
        "shard_size": shard_size,
        "max_chars": max_chars,
        "confidence": pipe_settings.get("confidence"),
        "threshold": pipe_settings.get("threshold"),
    }


def _count(number: int, noun: str) -> str:
    """`1 shard`, `2 shards`."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _pipe_settings(confidence: bool | None, threshold: float | None) -> dict[str, Any]:
    """The `bilstm_crf` settings given: `confidence` and `threshold`, the first on when the
    second is above 0 and confidence is not turned off; an error for values they cannot take."""
    settings: dict[str, Any] = {}
    if confidence is not None:
        if not isinstance(confidence, bool):
            raise AnnotateError(
                f"confidence (--confidence) must be True or False, got {confidence!r}."
            )
        settings["confidence"] = confidence
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise AnnotateError(f"threshold (--threshold) must be a number, got {threshold!r}.")
        if not 0.0 <= threshold <= 1.0:
            raise AnnotateError(f"threshold (--threshold) must be in [0, 1], got {threshold!r}.")
        settings["threshold"] = float(threshold)
        if threshold > 0:
            settings.setdefault("confidence", True)
    return settings


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a shard is written and counted, so that its file, the
    manifest and the summary agree when the run is stopped; a signal that came meanwhile
    acts right after. Only in the main thread with Python's handlers: elsewhere, as is."""
    held = (signal.SIGINT, signal.SIGTERM)
    foreign = any(signal.getsignal(number) is None for number in held)  # set outside Python
    if foreign or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.signal(number, lambda got, _: caught.append(got)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


def _add(summary: Summary, report: ShardReport) -> None:
    """Count a shard written in `summary`."""
    summary.rows += report.rows
    summary.errors += report.errors
    summary.words += report.words
    summary.shards_written += 1
    if summary.first_shard_seconds is None:
        summary.first_shard_seconds = report.elapsed


def _check_settings(
    batch_size: int,
    workers: int,
    shard_size: int,
    max_chars: int | None,
    engine: str,
    output_format: str,
    gpus_per_actor: float,
) -> None:
    """Refuse settings that cannot work, naming the option, before anything is loaded."""
    counts = {"batch_size": batch_size, "workers": workers, "shard_size": shard_size}
    if max_chars is not None:
        counts["max_chars"] = max_chars
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            option = "--" + name.replace("_", "-")
            raise AnnotateError(f"{name} ({option}) must be a whole number >= 1, got {value!r}.")
    if engine not in ENGINES:
        raise AnnotateError(f"engine (--engine) must be one of {ENGINES}, got {engine!r}.")
    if output_format not in FORMATS:
        raise AnnotateError(
            f"output_format (--format) must be one of {FORMATS}, got {output_format!r}."
        )
    if gpus_per_actor < 0 or (gpus_per_actor > 0 and engine != "ray"):
        raise AnnotateError(
            f"gpus_per_actor (--gpus-per-actor) must be >= 0 and needs engine 'ray', "
            f"got {gpus_per_actor!r} with engine {engine!r}."
        )


def _model_identity(model: str) -> dict[str, Any]:
    """The model for the manifest: its name or folder, and a digest of its files' names,
    sizes and modification times, so that a retrained model in the same place is noticed."""
    folder = Path(model)
    if not folder.is_dir():
        if not spacy.util.is_package(model):
            return {"model": model, "model_files": None}
        folder = spacy.util.get_package_path(model)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            name = path.relative_to(folder).as_posix()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"model": model, "model_files": digest.hexdigest()[:16]}


def _pending(
    rows: Iterator[Row], shard_size: int, output_format: str, manifest: Manifest, summary: Summary
) -> Iterator[Shard]:
    """The input's shards that the manifest does not list as complete, counting the others
    (and their rows) in `summary`."""
    for index, batch in enumerate(minibatch(rows, size=shard_size)):
        name = shard_name(index, output_format)
        if manifest.is_done(name):
            rows_done, errors = manifest.counts(name)
            summary.shards_skipped += 1
            summary.earlier_rows += rows_done
            summary.earlier_errors += errors
        else:
            yield Shard(index, index * shard_size, list(batch))


def _write(
    annotated: Annotated,
    folder: Path,
    output_format: str,
    scored: bool,
    manifest: Manifest,
    start: float,
) -> ShardReport:
    """Write one shard, then list it in the manifest: only then is it complete."""
    name = shard_name(annotated.shard.index, output_format)
    size = write_shard(folder, name, annotated.records, output_format, scored)
    rows = len(annotated.records)
    errors = sum(record["error"] is not None for record in annotated.records)
    manifest.add_shard(name, rows, errors, size)
    elapsed = time.perf_counter() - start
    return ShardReport(name, annotated.shard.index, rows, errors, annotated.words, elapsed)
