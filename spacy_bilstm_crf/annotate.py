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
settings is refused unless told to overwrite.

Run `python -m spacy_bilstm_crf annotate MODEL INPUT OUTPUT [options]`.
"""

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spacy
from spacy.util import minibatch

from .annotate_engines import (
    Annotated,
    Shard,
    load_pipeline,
    local_engine,
    ray_engine,
    require_ray,
    score_keys,
)
from .annotate_io import (
    FORMATS,
    AnnotateError,
    Manifest,
    Row,
    check_input,
    input_fingerprint,
    read_rows,
    require_pyarrow,
    shard_name,
    write_shard,
)

ENGINES = ("local", "ray")
DEFAULT_BATCH_SIZE = 256
DEFAULT_SHARD_SIZE = 10_000

__all__ = ["AnnotateError", "ShardReport", "Summary", "annotate"]


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
    """What a run did: rows and error rows written, shards written and skipped, the time."""

    output: Path
    rows: int = 0
    errors: int = 0
    words: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    first_shard_seconds: float | None = None

    @property
    def texts_per_second(self) -> float:
        return (self.rows - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.rows:,} rows ({self.errors:,} errors) to {self.output}: "
            f"{self.shards_written:,} shards written, {self.shards_skipped:,} skipped, "
            f"{self.seconds:.1f} s, {self.texts_per_second:,.0f} texts/s, "
            f"{self.words_per_second:,.0f} words/s"
        )


def annotate(
    model: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    text_column: str = "text",
    id_column: str = "id",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    engine: str = "local",
    output_format: str = "jsonl",
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_chars: int | None = None,
    gpus_per_actor: float = 0.0,
    overwrite: bool = False,
    on_shard: Callable[[ShardReport], None] | None = None,
) -> Summary:
    """Annotate every row of `input_path` with the pipeline `model` into `output_dir`.

    `model`: a pipeline folder or an installed package, for `spacy.load` (with Ray on a
    cluster, a folder at the same path on every node, or a package installed on each).
    `workers`: processes that each load the pipeline once and run `nlp.pipe` (local; more than
    one are spawned, so a script calling this needs `if __name__ == "__main__":`), or Ray
    actors (one CPU each, or `gpus_per_actor` GPUs). `max_chars`: longer texts are error rows
    (default: the pipeline's `nlp.max_length`). `on_shard` is called after each shard is
    written. Raises `AnnotateError` on bad settings, before any work.
    """
    start = time.perf_counter()
    _check_settings(
        batch_size, workers, shard_size, max_chars, engine, output_format, gpus_per_actor
    )
    input_path = Path(input_path)
    output_dir = Path(output_dir)
    kind = check_input(input_path, text_column)
    if output_format == "parquet":
        require_pyarrow("Parquet output")
    if engine == "ray":
        require_ray()
    model = str(Path(model).resolve()) if Path(model).is_dir() else str(model)
    nlp = load_pipeline(model, max_chars)
    max_chars = max_chars or nlp.max_length
    settings = {
        **_model_identity(model),
        "text_column": text_column,
        "id_column": id_column,
        "format": output_format,
        "shard_size": shard_size,
        "max_chars": max_chars,
    }
    manifest = Manifest.open(output_dir, input_fingerprint(input_path), settings, overwrite)
    scored = bool(score_keys(nlp))
    summary = Summary(output_dir)
    rows = read_rows(input_path, kind, text_column, id_column, max_chars)
    shards = _pending(rows, shard_size, output_format, manifest, summary)
    if engine == "local":
        done = local_engine(
            nlp, shards, model=model, max_chars=max_chars, batch_size=batch_size, workers=workers
        )
    else:
        del nlp  # the actors load their own
        done = ray_engine(
            model,
            shards,
            batch_size=batch_size,
            workers=workers,
            max_chars=max_chars,
            gpus_per_actor=gpus_per_actor,
        )
    for annotated in done:
        report = _write(annotated, output_dir, output_format, scored, manifest, start)
        summary.rows += report.rows
        summary.errors += report.errors
        summary.words += report.words
        summary.shards_written += 1
        if summary.first_shard_seconds is None:
            summary.first_shard_seconds = report.elapsed
        if on_shard is not None:
            on_shard(report)
    manifest.finish()
    summary.seconds = time.perf_counter() - start
    return summary


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
    """The input's shards that the manifest does not list as complete, counting the others."""
    for index, batch in enumerate(minibatch(rows, size=shard_size)):
        if manifest.is_done(shard_name(index, output_format)):
            summary.shards_skipped += 1
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
