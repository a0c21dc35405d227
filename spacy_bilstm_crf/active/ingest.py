"""Reviewed tasks into training docs with partial labels.

Inside a reviewed region every token gets its label, `O` included; outside it tokens stay
missing, so that the tagger's CRF, which sums over the tags of missing tokens, learns from
exactly what a person looked at. An entity the person marked across the region's edge
widens the region to cover it. Answers on the same text from the same source (several span
tasks of one sentence) become one doc with the union of their regions.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc, Span

from .formats import Answer, FormatError, Skipped


@dataclass
class Ingested:
    """The docs made, with counts of what went in and what was skipped."""

    docs: list[Doc] = field(default_factory=list)
    answers: int = 0
    skipped: Counter = field(default_factory=Counter)
    entities: int = 0
    reviewed_tokens: int = 0
    missing_tokens: int = 0

    def __str__(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return (
            f"{self.answers:,} answers -> {len(self.docs):,} docs, {self.entities:,} entities, "
            f"{self.reviewed_tokens:,} tokens labelled, {self.missing_tokens:,} left missing; "
            f"skipped: {skipped or 'none'}"
        )


@dataclass
class _Merged:
    text: str
    regions: list[tuple[int, int]]
    entities: dict[tuple[int, int], tuple[str, str]]  # (start, end) -> (label, where)
    where: str


def ingest(nlp: Language, answers: Iterable[Answer | Skipped]) -> Ingested:
    """Docs for `spacy train`, tokenized by `nlp`, from a tool's answers."""
    result = Ingested()
    merged: dict[tuple[Any, ...], _Merged] = {}
    for answer in answers:
        if isinstance(answer, Skipped):
            result.skipped[answer.reason] += 1
            continue
        result.answers += 1
        key = (
            (answer.source, answer.offset, answer.text)
            if answer.source is not None
            else (answer.text,)
        )
        target = merged.setdefault(key, _Merged(answer.text, [], {}, answer.where))
        target.regions.append(answer.review)
        for start, end, label in answer.entities:
            _add_entity(target, start, end, label, answer.where)
    for item in merged.values():
        doc = _partial_doc(nlp, item)
        result.docs.append(doc)
        result.entities += len(doc.ents)
        labelled = sum(token.ent_iob_ != "" for token in doc)
        result.reviewed_tokens += labelled
        result.missing_tokens += len(doc) - labelled
    return result


def _add_entity(target: _Merged, start: int, end: int, label: str, where: str) -> None:
    """Add an entity, refusing one that overlaps another differently (two answers disagree)."""
    for (other_start, other_end), (other_label, other_where) in target.entities.items():
        if (other_start, other_end) == (start, end):
            if other_label != label:
                raise FormatError(
                    f"{where}: characters {start}-{end} are {label!r}, but {other_where} "
                    f"says {other_label!r}"
                )
            return
        if start < other_end and other_start < end:
            raise FormatError(
                f"{where}: entity {start}-{end} overlaps {other_start}-{other_end} of {other_where}"
            )
    target.entities[(start, end)] = (label, where)


def _partial_doc(nlp: Language, item: _Merged) -> Doc:
    """The text as a doc: entities, `O` on the other reviewed tokens, the rest missing."""
    doc = nlp.make_doc(item.text)
    spans = []
    for (start, end), (label, where) in sorted(item.entities.items()):
        span = doc.char_span(start, end, label=label)
        if span is None:
            raise FormatError(
                f"{where}: entity {item.text[start:end]!r} ({start}-{end}) does not start and "
                "end on token boundaries of the pipeline's tokenizer"
            )
        if span[0].is_space or span[-1].is_space:
            raise FormatError(f"{where}: entity {start}-{end} starts or ends on whitespace")
        spans.append(span)
    reviewed = [False] * len(doc)
    for token in doc:
        end = token.idx + len(token)
        if any(start < end and token.idx < stop for start, stop in item.regions):
            reviewed[token.i] = True
    for span in spans:  # an entity across a region's edge was reviewed whole
        reviewed[span.start : span.end] = [True] * len(span)
    inside = {i for span in spans for i in range(span.start, span.end)}
    outside = [Span(doc, i, i + 1) for i in range(len(doc)) if reviewed[i] and i not in inside]
    doc.set_ents(spans, outside=outside, default="missing")
    return doc
