"""Reviewed tasks into training docs with partial labels.

Inside a reviewed region every token gets its label, `O` included; outside it tokens stay
missing, so that the tagger's CRF, which sums over the tags of missing tokens, learns from
exactly what a person looked at. An entity the person marked across the region's edge
widens the region to cover it. Answers on the same text from the same source (several span
tasks of one sentence) become one doc with the union of their regions.

A person's mouse is not the tokenizer: a region that ends inside a word or on a space is
snapped to the tokens it touches (spaces trimmed first), and said so. A task whose regions
cannot be used (they overlap once snapped, or disagree with another answer on the same text)
is skipped with the reason; the rest of the round goes in.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spacy.language import Language
from spacy.tokens import Doc, Span

from .answers import Answer, Skipped


@dataclass
class Ingested:
    """The docs made, with counts of what went in, what was snapped and what was skipped."""

    docs: list[Doc] = field(default_factory=list)
    answers: int = 0
    skipped: Counter = field(default_factory=Counter)
    problems: list[Skipped] = field(default_factory=list)
    snapped: list[tuple[str, str, str]] = field(default_factory=list)
    entities: int = 0
    reviewed_tokens: int = 0
    missing_tokens: int = 0

    def __str__(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return (
            f"{self.answers:,} answers -> {len(self.docs):,} docs, {self.entities:,} entities "
            f"({len(self.snapped):,} regions snapped to token boundaries), "
            f"{self.reviewed_tokens:,} tokens labelled, {self.missing_tokens:,} left missing; "
            f"skipped: {skipped or 'none'}"
        )


@dataclass
class _Merged:
    text: str
    doc: Doc
    regions: list[tuple[int, int]]
    entities: dict[tuple[int, int], tuple[str, str]]  # tokens (start, end) -> (label, where)


def ingest(nlp: Language, answers: Iterable[Answer | Skipped]) -> Ingested:
    """Docs for `spacy train`, tokenized by `nlp`, from a tool's answers."""
    result = Ingested()
    merged: dict[tuple[Any, ...], _Merged] = {}
    for answer in answers:
        if isinstance(answer, Skipped):
            _skip(result, answer)
            continue
        key = (
            (answer.source, answer.offset, answer.text)
            if answer.source is not None
            else (answer.text,)
        )
        target = merged.get(key) or _Merged(answer.text, nlp.make_doc(answer.text), [], {})
        try:
            spans = _token_spans(target.doc, answer, result)
            _check_agrees(target, spans, answer.where)
        except _Unusable as problem:
            _skip(result, Skipped(answer.where, "unusable", str(problem)))
            continue
        merged[key] = target
        result.answers += 1
        target.regions.append(answer.review)
        for span in spans:
            target.entities[(span.start, span.end)] = (span.label_, answer.where)
    for item in merged.values():
        doc = _partial_doc(item)
        result.docs.append(doc)
        result.entities += len(doc.ents)
        labelled = sum(token.ent_iob_ != "" for token in doc)
        result.reviewed_tokens += labelled
        result.missing_tokens += len(doc) - labelled
    return result


class _Unusable(ValueError):
    """An answer whose regions cannot be used; the message says why."""


def _skip(result: Ingested, skipped: Skipped) -> None:
    result.skipped[skipped.reason] += 1
    if skipped.detail:
        result.problems.append(skipped)


def _token_spans(doc: Doc, answer: Answer, result: Ingested) -> list[Span]:
    """The answer's entities as spans of `doc`, each snapped to the tokens it touches."""
    spans = []
    snapped = []
    for start, end, label in answer.entities:
        region = answer.text[start:end]
        first = start + len(region) - len(region.lstrip())
        last = end - (len(region) - len(region.rstrip()))
        if first >= last:
            raise _Unusable(f"region {start}-{end} ({region!r}, {label}) holds only spaces")
        span = doc.char_span(first, last, label=label, alignment_mode="expand")
        if span is None or span[0].is_space or span[-1].is_space:
            raise _Unusable(f"region {region!r} ({start}-{end}) covers no word")
        if (span.start_char, span.end_char) != (start, end):
            snapped.append((answer.where, region, span.text))
        spans.append(span)
    spans.sort(key=lambda span: span.start)
    for before, after in zip(spans, spans[1:]):
        if after.start < before.end:
            raise _Unusable(
                f"regions {before.text!r} and {after.text!r} overlap once snapped to whole tokens"
            )
    result.snapped += snapped
    return spans


def _check_agrees(target: _Merged, spans: list[Span], where: str) -> None:
    """An answer must not contradict an earlier answer on the same text (two span tasks of
    one sentence that label the same tokens differently)."""
    for span in spans:
        for (start, end), (label, other) in target.entities.items():
            if (start, end) == (span.start, span.end) and label == span.label_:
                continue
            if start < span.end and span.start < end:
                raise _Unusable(
                    f"{span.text!r} ({span.label_}) disagrees with {other}: "
                    f"{target.doc[start:end].text!r} ({label})"
                )


def _partial_doc(item: _Merged) -> Doc:
    """The text as a doc: entities, `O` on the other reviewed tokens, the rest missing."""
    doc = item.doc
    spans = [
        Span(doc, start, end, label=label)
        for (start, end), (label, _) in sorted(item.entities.items())
    ]
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
