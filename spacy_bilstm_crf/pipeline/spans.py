"""Entities from tag ids, with NumPy: where they start and end, and which survive in a Doc.

Tag ids follow `tags.tag_names`: 0 is `O`, then for each label the scheme's prefixes, "BI"
(BIO) or "BILU" (BILUO). Sequences that break the scheme (only the softmax head makes them)
are read as spaCy reads IOB: an entity starts at every `B` or `U`, and at an `I` or `L` that
does not continue an entity of its label.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy
from spacy.attrs import ENT_IOB, IS_SPACE, SENT_START
from spacy.tokens import Doc, Span, SpanGroup

# ENT_IOB values in spaCy: 1 inside, 3 begin.
_ENTITY_IOB = (1, 3)


class Entities(NamedTuple):
    """Entities as token offsets, `end` exclusive, and label indices; all shape `(E,)`."""

    starts: numpy.ndarray
    ends: numpy.ndarray
    labels: numpy.ndarray


def read_entities(ids: numpy.ndarray, scheme: str) -> Entities:
    """The entities of one sequence of tag ids."""
    ids = numpy.asarray(ids, dtype="int64")
    return read_sequences(ids, numpy.asarray([len(ids)]), scheme)


def read_sequences(ids: numpy.ndarray, lengths: numpy.ndarray, scheme: str) -> Entities:
    """The entities of consecutive sequences of tag ids, `ids` flat with `lengths` per
    sequence: offsets into `ids`, and no entity continues across a sequence's start. One
    pass for a whole batch, rather than a few NumPy calls per sequence."""
    ids = numpy.asarray(ids, dtype="int64")
    width = 2 if scheme == "BIO" else 4
    labels = (ids - 1) // width  # shape: (T,), -1 for O
    prefix = (ids - 1) % width  # shape: (T,), B I (L U)
    entity = ids > 0
    inside = entity & ((prefix == 1) | (prefix == 2))  # I or L
    first = numpy.zeros(len(ids), dtype=bool)
    first[(numpy.cumsum(lengths) - lengths)[numpy.asarray(lengths) > 0]] = True
    previous_label = numpy.concatenate([[-1], labels[:-1]])
    previous_entity = numpy.concatenate([[False], entity[:-1]])
    continues = inside & previous_entity & (previous_label == labels) & ~first  # (T,)
    starts = numpy.flatnonzero(entity & ~continues)
    next_continues = numpy.concatenate([continues[1:], [False]])
    ends = numpy.flatnonzero(entity & ~next_continues) + 1
    return Entities(starts, ends, labels[starts])


def trim_spaces(entities: Entities, is_space: numpy.ndarray) -> tuple[Entities, numpy.ndarray]:
    """Entities without leading or trailing whitespace tokens, and which of the given ones
    are kept (those with something left)."""
    starts, ends = entities.starts.copy(), entities.ends.copy()
    for i in numpy.flatnonzero(is_space[starts] | is_space[ends - 1]):
        while starts[i] < ends[i] and is_space[starts[i]]:
            starts[i] += 1
        while ends[i] > starts[i] and is_space[ends[i] - 1]:
            ends[i] -= 1
    kept = ends > starts
    return Entities(starts[kept], ends[kept], entities.labels[kept]), kept


def doc_entities(
    doc: Doc, ids: numpy.ndarray, lengths: Sequence[int], scheme: str
) -> tuple[Entities, numpy.ndarray]:
    """The entities of `doc`'s tag ids, read segment by segment (`lengths`, as the model cut
    the doc: an entity never crosses a cut) and trimmed of whitespace tokens, and which of the
    entities read are kept."""
    return docs_entities([doc], [ids], [lengths], scheme)[0]


def docs_entities(
    docs: Sequence[Doc],
    ids: Sequence[numpy.ndarray],
    lengths: Sequence[Sequence[int]],
    scheme: str,
) -> list[tuple[Entities, numpy.ndarray]]:
    """`doc_entities` for a batch: the tags of all docs read in one pass, then split by doc."""
    empty = numpy.zeros(0, dtype="int64")
    flat = numpy.concatenate([empty, *(numpy.asarray(x, dtype="int64") for x in ids)])
    sizes = numpy.asarray([n for doc_lengths in lengths for n in doc_lengths], dtype="int64")
    found = read_sequences(flat, sizes, scheme)
    doc_starts = numpy.cumsum([0] + [len(doc) for doc in docs])  # shape: (D + 1,)
    bounds = numpy.searchsorted(found.starts, doc_starts)  # each doc's first entity
    out = []
    for i, doc in enumerate(docs):
        begin, end = bounds[i], bounds[i + 1]
        if begin == end:
            out.append((Entities(empty, empty, empty), numpy.zeros(0, dtype=bool)))
            continue
        shift = doc_starts[i]
        entities = Entities(
            found.starts[begin:end] - shift, found.ends[begin:end] - shift, found.labels[begin:end]
        )
        out.append(trim_spaces(entities, doc.to_array(IS_SPACE).astype(bool)))
    return out


def set_entities(doc: Doc, spans: list[Span], overwrite: bool) -> None:
    """Write `spans` to `doc.ents`: replacing what is there, or else adding only those that do
    not overlap an entity set before. Every other token is outside an entity."""
    if overwrite or not doc.has_annotation("ENT_IOB"):
        doc.set_ents(spans, default="outside")
        return
    taken = numpy.isin(doc.to_array(ENT_IOB), _ENTITY_IOB)
    if not taken.any():
        doc.set_ents(spans, default="outside")
        return
    covered = numpy.concatenate([[0], numpy.cumsum(taken)])
    new = [span for span in spans if covered[span.end] == covered[span.start]]
    doc.set_ents(list(doc.ents) + new, default="outside")


def set_nbest(
    doc: Doc,
    pieces: Sequence[Any],
    labels: Sequence[str],
    cfg: dict[str, Any],
    segments: Sequence[int],
) -> None:
    """Write the analyses of rank r of every piece (`analyses.Piece`: the doc, or a
    sentence) as the span group `{spans_key}_nbest_{r}`, with their probabilities; the doc's
    analyses are read segment by segment (`segments`), with the component's `cfg` settings."""
    key, scheme = cfg["spans_key"], cfg["scheme"]
    is_space = doc.to_array(IS_SPACE).astype(bool)
    ranks = max((len(piece.analyses) for piece in pieces), default=0)
    for rank in range(1, ranks + 1):
        spans, probabilities = [], []
        for piece in pieces:
            if len(piece.analyses) < rank:
                probabilities.append(0.0)
                continue
            ids, log_prob = piece.analyses[rank - 1]
            probabilities.append(float(numpy.exp(log_prob)))
            if cfg["nbest_unit"] == "doc":
                entities, _ = doc_entities(doc, ids, segments, scheme)
            else:  # one sentence, inside one segment
                found = read_entities(ids, scheme)
                shift = piece.start
                moved = Entities(found.starts + shift, found.ends + shift, found.labels)
                entities, _ = trim_spaces(moved, is_space)
            spans += [
                Span(doc, int(start), int(end), label=labels[label])
                for start, end, label in zip(*entities)
            ]
        group = SpanGroup(doc, name=f"{key}_nbest_{rank}", spans=spans)
        group.attrs["rank"] = rank
        group.attrs["pieces"] = [[piece.start, piece.end] for piece in pieces]
        group.attrs["probabilities"] = probabilities
        if len(pieces) == 1:
            group.attrs["probability"] = probabilities[0]
        doc.spans[group.name] = group


def sentence_bounds(doc: Doc) -> list[tuple[int, int]]:
    """Each sentence's tokens `(start, end)`, as `doc.sents` has them but read from one array
    (`doc.sents` makes a Token object per token); the whole doc without sentence starts."""
    if not doc.has_annotation("SENT_START"):
        return [(0, len(doc))] if len(doc) else []
    found = numpy.flatnonzero(doc.to_array(SENT_START) == 1)
    starts = [0, *(int(i) for i in found if i > 0)]
    return list(zip(starts, [*starts[1:], len(doc)]))
