"""What components before the tagger fixed in a doc, and the tagger's entities written around it.

spaCy marks it in each token's `ENT_IOB` and `ENT_TYPE`: a token of a preset entity is B or I
with a label; a blocked token (`doc.set_ents(blocked=...)`) is B without one, never part of an
entity, as spaCy's `ner` honours it; O, which `doc.ents = ...` leaves on every other token, and
missing say nothing about a token. With `presets = "fixed"` (the default, as spaCy's `ner`
does), the tagger decodes around them: preset entities are fixed (their tags forced by
`tag_sets.TagSets.entity`; an entity of a label the tagger does not have keeps its tokens out
of the tagger's entities), blocked tokens stay outside and blocked, every other token is free,
and the rest of the doc is the best analysis under that; confidence, threshold and n-best are
then conditional on the presets. `presets = "keep"` is the earlier behaviour: decode freely,
keep the preset entities and drop the tagger's that overlap them (`spans.set_entities`).
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy
from spacy.attrs import ENT_IOB, ENT_TYPE
from spacy.tokens import Doc, Span

from ..ml.crf_ops import Candidates, ConstraintError
from ..tag_sets import TagSets, cut
from .spans import set_entities

# ENT_IOB values in spaCy: 3 begin (with no label: blocked).
_BEGIN = 3


class Presets(NamedTuple):
    """A doc's preset entities, its blocked tokens (one span each), and every token either
    covers `(T,)`."""

    entities: list[Span]
    blocked: list[Span]
    taken: numpy.ndarray


def read_presets(doc: Doc) -> Presets | None:
    """The doc's presets, or None when it has none."""
    if not len(doc) or not doc.has_annotation("ENT_IOB"):
        return None
    iob, types = doc.to_array([ENT_IOB, ENT_TYPE]).T.astype("int64")
    blocked = (iob == _BEGIN) & (types == 0)  # shape: (T,)
    entities = list(doc.ents)
    if not entities and not blocked.any():
        return None
    taken = blocked.copy()
    for ent in entities:
        taken[ent.start : ent.end] = True
    return Presets(entities, [doc[i : i + 1] for i in numpy.flatnonzero(blocked)], taken)


def docs_tag_sets(
    docs: Sequence[Doc], labels: Sequence[str], scheme: str
) -> list[numpy.ndarray | None] | None:
    """Per doc, the tags its presets leave each token `(T, K)` (None for a doc without
    presets); None when no doc has any, so that such batches decode as without presets."""
    sets = [tag_sets(doc, read_presets(doc), labels, scheme) for doc in docs]
    return sets if any(found is not None for found in sets) else None


def tag_sets(
    doc: Doc, presets: Presets | None, labels: Sequence[str], scheme: str
) -> numpy.ndarray | None:
    """The tags `(T, K)` each token may take under `presets` (None without presets)."""
    if presets is None:
        return None
    sets = TagSets(labels, len(doc), scheme)
    for ent in presets.entities:
        if ent.label_ in sets.labels:
            sets.entity(ent.start, ent.end, ent.label_)
        else:  # a label the tagger does not have: none of its entities there
            sets.outside(ent.start, ent.end)
    for span in presets.blocked:
        sets.outside(span.start, span.end)
    return sets.allowed


def segment_candidates(
    fixed: Sequence[numpy.ndarray | None] | None,
    segments: Sequence[Sequence[int]],
    tags: Sequence[str],
    scheme: str,
) -> Candidates:
    """Per-doc tag sets cut into the model's segments (all tags for docs without presets)."""
    if fixed is None:
        return None
    out: list[numpy.ndarray] = []
    for sets, lengths in zip(fixed, segments):
        if sets is None:
            out += [numpy.ones((length, len(tags)), dtype=bool) for length in lengths]
        else:
            out += cut(sets, lengths, tags, scheme)
    return out


def clear_of(spans: Sequence[Span], presets: Presets | None) -> numpy.ndarray:
    """Which `spans` `(E,)` cover no token of the presets (decoded around them, the tagger's
    own entities: the others are the presets' own tags, read back)."""
    if presets is None:
        return numpy.ones(len(spans), dtype=bool)
    covered = numpy.concatenate([[0], numpy.cumsum(presets.taken)])
    return numpy.asarray([covered[s.end] == covered[s.start] for s in spans], dtype=bool)


def write_entities(
    doc: Doc, spans: list[Span], probs: numpy.ndarray | None, cfg: dict[str, Any]
) -> tuple[list[Span], numpy.ndarray | None]:
    """Write the tagger's entities `spans` (with their probabilities, if any) to `doc.ents` as
    the component's `cfg` says (`overwrite`, `presets`, `threshold`); return the tagger's own
    entities and their probabilities, those its confidence group lists."""
    around = not cfg["overwrite"] and cfg["presets"] == "fixed"
    fixed = read_presets(doc) if around else None
    if fixed is not None:  # the tagger's own entities: the others are the presets' tags
        own = clear_of(spans, fixed)
        spans = [span for span, keep in zip(spans, own) if keep]
        probs = None if probs is None else probs[own]
    chosen = spans
    if cfg["threshold"] > 0 and probs is not None:
        chosen = [span for span, prob in zip(spans, probs) if prob >= cfg["threshold"]]
    if around:
        write_around(doc, fixed, chosen)
    else:
        set_entities(doc, chosen, cfg["overwrite"])
    return spans, probs


def write_around(doc: Doc, presets: Presets | None, spans: Sequence[Span]) -> None:
    """`doc.ents` as the preset entities and the tagger's `spans` (clear of them); blocked
    tokens stay blocked, every other token outside."""
    if presets is None:
        doc.set_ents(list(spans), default="outside")
        return
    doc.set_ents(presets.entities + list(spans), blocked=presets.blocked, default="outside")


def conflict(error: ConstraintError, docs: Sequence[Doc], segments: Sequence[Sequence[int]]) -> str:
    """`error`'s segment row and positions as a doc's tokens, for a message."""
    row = error.row
    for index, (doc, lengths) in enumerate(zip(docs, segments)):
        if row < len(lengths):
            offset = sum(lengths[:row])
            first, last = offset + error.first, offset + error.last
            text = doc[first : last + 1].text
            return f"doc {index}, tokens {first}..{last} ({text!r})"
        row -= len(lengths)
    return str(error)
