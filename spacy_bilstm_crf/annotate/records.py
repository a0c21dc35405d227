"""What the batch annotator's engines share: shards of rows, the pipeline each loads, the
entity records of a doc, and `assemble`, which puts every result at its row and fills the
error rows in between, so that each shard comes back complete and in input order.
"""

from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import spacy
from spacy.language import Language
from spacy.tokens import Doc

from .rows import AnnotateError, Row


class Shard(NamedTuple):
    """Input rows `[start, start + len(rows))`, written together as output shard `index`."""

    index: int
    start: int
    rows: list[Row]


class Annotated(NamedTuple):
    """A shard's output records, one per input row in order, and the words annotated."""

    shard: Shard
    records: list[dict]
    words: int


def load_pipeline(
    model: str | Path,
    max_chars: int | None = None,
    threads: int | None = None,
    settings: dict[str, Any] | None = None,
) -> Language:
    """`spacy.load(model)`, with `nlp.max_length` raised to `max_chars` where that is more,
    the `bilstm_crf` components on `threads` threads when given (a worker or actor that
    shares the machine with others uses one), and `settings` (e.g. `confidence`,
    `threshold`) set on each of them: an error if there is none to set them on."""
    try:
        nlp = spacy.load(model)
    except (OSError, ValueError) as error:
        raise AnnotateError(f"Cannot load the pipeline {str(model)!r}: {error}") from error
    if max_chars is not None and max_chars > nlp.max_length:
        nlp.max_length = max_chars
    ours = [nlp.get_pipe(name) for name in nlp.pipe_names if _is_ours(nlp, name)]
    if settings and not ours:
        options = " and ".join(f"--{key}" for key in settings)
        raise AnnotateError(
            f"The pipeline {str(model)!r} has no bilstm_crf component for {options} to set; "
            f"its components: {nlp.pipe_names}."
        )
    for pipe in ours:
        pipe.cfg.update(settings or {})
        if threads is not None:
            pipe.cfg["threads"] = threads
    return nlp


def _is_ours(nlp: Language, name: str) -> bool:
    return nlp.get_pipe_meta(name).factory == "bilstm_crf"


def score_keys(nlp: Language) -> list[str]:
    """The `doc.spans` keys where `bilstm_crf` components with `confidence` put their scores."""
    keys = []
    for name in nlp.pipe_names:
        if _is_ours(nlp, name):
            cfg = nlp.get_pipe(name).cfg
            if cfg.get("confidence"):
                keys.append(cfg["spans_key"])
    return keys


def doc_ents(doc: Doc, keys: list[str]) -> list[dict[str, Any]]:
    """`doc.ents` as records; with score `keys`, each has the score of its span (or None)."""
    scores: dict[tuple[int, int, str], float] = {}
    for key in keys:
        group = doc.spans.get(key)
        if group is None:
            continue
        for span, score in zip(group, group.attrs.get("scores", ())):
            scores.setdefault((span.start, span.end, span.label_), float(score))
    ents = []
    for ent in doc.ents:
        record: dict[str, Any] = {
            "start_char": ent.start_char,
            "end_char": ent.end_char,
            "label": ent.label_,
        }
        if keys:
            record["score"] = scores.get((ent.start, ent.end, ent.label_))
        ents.append(record)
    return ents


def assemble(
    waiting: deque[Shard], results: Iterable[tuple[list[dict], int]]
) -> Iterator[Annotated]:
    """Complete shards in order from `results`, one `(ents, words)` per good row in input order.

    `waiting` holds the shards whose texts went into the pipeline and are not complete yet,
    oldest first; the engine may append to it while `results` is being read.
    """
    records: list[dict] = []
    words = 0

    def ready() -> Iterator[Annotated]:
        """Finish the oldest shards that need no more results; stop at one that does."""
        nonlocal records, words
        while waiting:
            rows = waiting[0].rows
            while len(records) < len(rows) and rows[len(records)].error is not None:
                row = rows[len(records)]
                records.append({"id": row.id, "ents": [], "error": row.error})
            if len(records) < len(rows):
                return
            yield Annotated(waiting.popleft(), records, words)
            records, words = [], 0

    for ents, count in results:
        yield from ready()
        if not waiting:
            raise RuntimeError("The pipeline returned more docs than it was given texts.")
        row = waiting[0].rows[len(records)]
        records.append({"id": row.id, "ents": ents, "error": None})
        words += count
        yield from ready()
    yield from ready()
    if waiting:
        raise RuntimeError("The pipeline returned fewer docs than it was given texts.")
