"""Annotation tasks: a text for a person to review, the region to review and the model's
entities on it, as `select` writes them and `ingest` reads the answers back.

A task's text is the unit it comes from (a whole text, or one sentence of it); `review` is
the part of the text the person labels: all of it for documents and sentences, one region
for spans (the rest is there to read). Offsets are characters of the text, end exclusive.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from spacy.tokens import Doc, Span


@dataclass(frozen=True)
class Entity:
    """An entity on a task's text: characters `start..end`, tokens `token_start..token_end`
    (end exclusive), its label and the model's probability for it (None when not known)."""

    start: int
    end: int
    token_start: int
    token_end: int
    label: str
    score: float | None = None


@dataclass
class Task:
    """One thing for a person to review.

    `score`: how informative the strategy finds it (higher first). `confidence`: the model's
    certainty in the same order reversed, in [0, 1] (lower first is the same order), for tools
    that sort by a confidence. `source`: the input row's id; `offset`: where `text` starts in
    that row's text. `sentences`: how many sentences the text shows (a person reads them all).
    """

    id: str
    text: str
    tokens: list[tuple[str, int, int, bool]]
    entities: list[Entity]
    review: tuple[int, int]
    score: float
    confidence: float
    source: Any
    offset: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    sentences: int = 1

    @property
    def review_tokens(self) -> int:
        """The tokens a person reviews: those overlapping `review`."""
        start, end = self.review
        return sum(1 for _, first, last, _ in self.tokens if first < end and last > start)


def doc_tokens(doc: Doc | Span) -> list[tuple[str, int, int, bool]]:
    """`(text, start, end, whitespace after)` per token, offsets from the start of `doc`
    (whose text ends at its last token: that one has no whitespace after)."""
    shift = doc.start_char if isinstance(doc, Span) else 0
    last = len(doc) - 1
    return [
        (token.text, token.idx - shift, token.idx - shift + len(token), bool(token.whitespace_))
        if i < last
        else (token.text, token.idx - shift, token.idx - shift + len(token), False)
        for i, token in enumerate(doc)
    ]


def span_entities(
    unit: Doc | Span, spans: list[Span], scores: dict[tuple[int, int, str], float]
) -> Iterator[Entity]:
    """The entities among `spans` (of the unit's doc) that lie inside `unit`, with offsets
    relative to it and the score `scores` gives their `(start, end, label)`, if any."""
    first = unit.start if isinstance(unit, Span) else 0
    last = unit.end if isinstance(unit, Span) else len(unit)
    shift = unit.start_char if isinstance(unit, Span) else 0
    for span in spans:
        if span.start >= first and span.end <= last:
            yield Entity(
                span.start_char - shift,
                span.end_char - shift,
                span.start - first,
                span.end - first,
                span.label_,
                scores.get((span.start, span.end, span.label_)),
            )
