"""The batch annotator's input: rows of JSONL or Parquet, checked before any work.

Every input row becomes a `Row` whether or not it is usable, so that the output has exactly one
record per input row: a row that cannot be annotated (no text, not a string, too long, a line
that is not JSON) carries the reason in `error`.
"""

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import srsly

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
_BOM = b"\xef\xbb\xbf"
_READ_BATCH = 10_000
# The JSON objects (and at most the lines) read to check the columns before any work.
_CHECK_ROWS = 1_000
_CHECK_LINES = 10_000
_FIELDS_SHOWN = 20
_JSON_TYPES = (str, int, float, bool, type(None), list, dict)


class AnnotateError(ValueError):
    """A problem with the annotator's input, output or settings; the message says which."""


class Row(NamedTuple):
    """One input row: its id, its text (None when unusable) and why it is unusable."""

    id: Any
    text: str | None
    error: str | None


def input_kind(path: Path) -> str:
    """ "jsonl" or "parquet", from the input file's extension."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    known = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES)
    raise AnnotateError(f"Cannot tell the format of {path}: its extension is not one of {known}.")


def require_pyarrow(why: str) -> Any:
    """The pyarrow module, or an error naming the extra that installs it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise AnnotateError(
            f'{why} needs pyarrow, which is not installed: pip install "spacy-bilstm-crf[parquet]"'
        ) from error
    return pyarrow


def check_input(path: Path, text_column: str, id_column: str | None = None) -> str:
    """Fail early on an input that cannot be read, or whose first rows lack the text column
    (or `id_column`, an id column the user named); return its kind."""
    if not path.exists():
        raise AnnotateError(f"The input file {path} does not exist.")
    if not path.is_file():
        raise AnnotateError(f"The input {path} is not a file.")
    kind = input_kind(path)
    if kind == "parquet":
        pyarrow = require_pyarrow(f"Reading {path.name}")
        try:
            names = pyarrow.parquet.ParquetFile(path).schema_arrow.names
        except pyarrow.ArrowException as error:
            raise AnnotateError(f"Cannot read {path} as Parquet: {error}") from error
        absent = f"is not in {path}; its columns are {_shown(names)}"
        _check_columns(text_column, id_column, names, absent)
    else:
        fields, count = _first_fields(path)
        if count:
            rows = "row" if count == 1 else f"{count:,} rows"
            absent = f"is in none of the first {rows} of {path}; their fields are {_shown(fields)}"
            _check_columns(text_column, id_column, fields, absent)
    return kind


def _check_columns(text_column: str, id_column: str | None, names: list[str], absent: str) -> None:
    """An error naming the text column, or the id column the user named, if `names` lacks
    it; `absent` says where it was looked for."""
    wanted = [("text", text_column, "Name the right one with --text-column.")]
    if id_column is not None:
        hint = "Name the right one with --id-column, or leave that out to number the rows."
        wanted.append(("id", id_column, hint))
    for what, column, hint in wanted:
        if column not in names:
            raise AnnotateError(f"The {what} column {column!r} {absent}. {hint}")


def _first_fields(path: Path) -> tuple[list[str], int]:
    """The fields of the first `_CHECK_ROWS` JSON objects of a JSONL file (of the first
    `_CHECK_LINES` lines at most), in order of appearance, and how many objects that was."""
    fields: dict[str, None] = {}
    count = 0
    with contextlib.closing(_jsonl_records(path)) as records:
        for record, problem in itertools.islice(records, _CHECK_LINES):
            if problem is not None:
                continue
            fields.update(dict.fromkeys(record))
            count += 1
            if count == _CHECK_ROWS:
                break
    return list(fields), count


def _shown(names: list[str]) -> str:
    """`names` for a message, the first `_FIELDS_SHOWN` of many."""
    if len(names) <= _FIELDS_SHOWN:
        return str(names)
    return f"{names[:_FIELDS_SHOWN]} and {len(names) - _FIELDS_SHOWN:,} more"


def read_rows(
    path: Path, kind: str, text_column: str, id_column: str, max_chars: int
) -> Iterator[Row]:
    """Every row of the input in order, lazily. Blank JSONL lines are not rows (as in srsly)."""
    if kind == "jsonl":
        records = _jsonl_records(path)
    else:
        records = _parquet_records(path, [text_column, id_column])
    for number, (record, problem) in enumerate(records):
        if problem is not None:
            yield Row(number, None, problem)
            continue
        row_id = record.get(id_column, number)
        if not isinstance(row_id, _JSON_TYPES):  # e.g. a Parquet timestamp
            row_id = str(row_id)
        if text_column not in record:
            yield Row(row_id, None, f"text is missing: the row has no {text_column!r} field")
            continue
        text = record[text_column]
        error = text_error(text, max_chars)
        yield Row(row_id, None if error else text, error)


def text_error(text: Any, max_chars: int) -> str | None:
    """Why `text` cannot be annotated, or None if it can."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not str"
    if len(text) > max_chars:
        return f"text has {len(text):,} characters, more than max_chars {max_chars:,}"
    return None


def _jsonl_records(path: Path) -> Iterator[tuple[dict, str | None]]:
    """`(record, None)` per JSON line, or `({}, problem)` for a line that is not an object."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            line = raw.strip()
            if not line:
                continue
            if number == 1 and line == b"[":
                raise AnnotateError(
                    f"{path} looks like one JSON array; the annotator reads JSON lines "
                    "(one object per line)."
                )
            try:
                record = srsly.json_loads(line.decode("utf8"))
            except UnicodeDecodeError as error:
                yield {}, f"line {number} is not valid UTF-8: {error}"
                continue
            except ValueError as error:
                yield {}, f"line {number} is not valid JSON: {error}"
                continue
            if not isinstance(record, dict):
                yield {}, f"line {number} is not a JSON object (got {type(record).__name__})"
                continue
            yield record, None


def _parquet_records(path: Path, columns: list[str]) -> Iterator[tuple[dict, None]]:
    """The rows of a Parquet file as dicts of those `columns` it has, a batch at a time."""
    pyarrow = require_pyarrow(f"Reading {path.name}")
    parquet = pyarrow.parquet.ParquetFile(path)
    present = [name for name in dict.fromkeys(columns) if name in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=_READ_BATCH, columns=present):
        for record in batch.to_pylist():
            yield record, None
