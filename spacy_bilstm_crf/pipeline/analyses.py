"""What the component computes from the emission scores besides the best tags: entity
probabilities and the k best analyses of docs or sentences, through `ml/crf_ops.py`.

`Predictions` is what `BiLSTMCRFTagger.predict` returns; `Analysis` what `analyze` adds for
choosing texts to annotate.
"""

from typing import Any, NamedTuple

import numpy
from spacy.tokens import Doc
from thinc.api import Model
from thinc.types import Floats2d

from ..ml import crf_ops
from ..ml.segments import split_by
from .known_entities import are_known
from .spans import read_sequences, sentence_bounds


class Piece(NamedTuple):
    """Tokens `start..end-1` of a doc (all of it, or a sentence) and their best analyses: tag
    ids and log probability, best first."""

    start: int
    end: int
    analyses: list[tuple[numpy.ndarray, float]]


class Predictions(NamedTuple):
    """What `predict` returns: tag ids per doc, entity probabilities and the n best analyses
    of each doc's pieces when asked for."""

    tags: list[numpy.ndarray]
    probs: list[numpy.ndarray] | None
    nbest: list[list[Piece]] | None = None


class Analysis(NamedTuple):
    """A doc's pieces (the doc, or its sentences) with their best analysis and its log
    probability, and each token's tag posteriors `(len(doc), K)`."""

    pieces: list[Piece]
    marginals: numpy.ndarray | None


def best_analyses(
    model: Model,
    docs: list[Doc],
    emissions: list[Floats2d],
    segments: list[list[int]],
    k: int,
    unit: str,
    temperature: float = 1.0,
    candidates: crf_ops.Candidates = None,
) -> list[list[Piece]]:
    """Per doc, its pieces with their `k` best analyses: the whole doc (its segments'
    analyses combined; `unit` "doc"), or each sentence within its segment; given the
    per-segment tag sets `candidates` when given."""
    if unit == "doc":
        per_segment = crf_ops.tagger_nbest(model, emissions, k, temperature, candidates)
        per_doc = split_by(per_segment, [len(lengths) for lengths in segments])
        return [
            [Piece(0, len(doc), best_combinations(lists, k))] for doc, lists in zip(docs, per_doc)
        ]
    rows, starts, ends, owners = [], [], [], []
    segment = 0
    for doc_index, (doc, lengths) in enumerate(zip(docs, segments)):
        offset = 0
        sentences = sentence_bounds(doc)
        for length in lengths:
            for begin, finish in sentences:
                begin, finish = max(begin, offset), min(finish, offset + length)
                if begin < finish:
                    rows.append(segment)
                    starts.append(begin - offset)
                    ends.append(finish - offset)
                    owners.append((doc_index, offset))
            offset += length
            segment += 1
    analyses = crf_ops.tagger_piece_nbest(
        model,
        emissions,
        numpy.asarray(rows),
        numpy.asarray(starts),
        numpy.asarray(ends),
        k,
        temperature,
        candidates,
    )
    pieces: list[list[Piece]] = [[] for _ in docs]
    for (doc_index, offset), begin, finish, found in zip(owners, starts, ends, analyses):
        pieces[doc_index].append(Piece(offset + begin, offset + finish, found))
    return pieces


def entity_probs(
    model: Model,
    docs: list[Doc],
    emissions: list[Floats2d],
    segments: list[list[int]],
    paths: list[numpy.ndarray],
    cfg: dict[str, Any],
    candidates: crf_ops.Candidates = None,
) -> list[numpy.ndarray]:
    """Per doc, the CRF probability of each predicted entity, in the order the entities
    are read from the tags (before whitespace trimming), at the entity's temperature: the
    component's `temperature`, or `seen_temperature` and `unseen_temperature` for entities
    among its `known_entities` and the others (settings from `cfg`); given the per-segment
    tag sets `candidates` when given."""
    scheme = cfg["scheme"]
    sizes = numpy.asarray([len(path) for path in paths], dtype="int64")
    found = read_sequences(numpy.concatenate([numpy.zeros(0, "int64"), *paths]), sizes, scheme)
    first = numpy.cumsum(sizes) - sizes  # each segment's offset in the flat tags
    rows = numpy.searchsorted(first, found.starts, side="right") - 1
    starts, ends, labels = found.starts - first[rows], found.ends - first[rows], found.labels
    tags, after = span_tags(labels, ends - starts, scheme)
    docs_of_rows = numpy.repeat(numpy.arange(len(segments)), [len(s) for s in segments])
    owners = docs_of_rows[rows]
    seen_t, unseen_t = cfg["seen_temperature"], cfg["unseen_temperature"]
    if seen_t is None or unseen_t is None:
        probs = crf_ops.crf_span_probs(
            model, emissions, rows, starts, tags, after, cfg["temperature"], candidates
        )
    else:
        sizes = [numpy.asarray(lengths, dtype="int64") for lengths in segments]
        offsets = numpy.concatenate(
            [numpy.zeros(0, dtype="int64")] + [numpy.cumsum(lengths) - lengths for lengths in sizes]
        )[rows]  # each entity's segment start in its doc
        texts = (
            docs[owner][offset + start : offset + end].text
            for owner, offset, start, end in zip(owners, offsets, starts, ends)
        )
        known = are_known(texts, cfg["known_entities"])
        probs = numpy.zeros(len(rows), dtype="float64")
        for group, temperature in ((known, seen_t), (~known, unseen_t)):
            if group.any():  # one forward-backward pass per temperature in use
                probs[group] = crf_ops.crf_span_probs(
                    model,
                    emissions,
                    rows[group],
                    starts[group],
                    tags[group],
                    after[group],
                    temperature,
                    candidates,
                )
    return [probs[owners == i] for i in range(len(segments))]


def best_combinations(
    lists: list[list[tuple[numpy.ndarray, float]]], k: int
) -> list[tuple[numpy.ndarray, float]]:
    """The `k` best concatenations of one path from each list (a doc's segments), by summed
    log probability, best first. A doc without segments has one, empty, analysis."""
    best: list[tuple[list[numpy.ndarray], float]] = [([], 0.0)]
    for options in lists:
        pairs = [
            (paths + [path], score + log_prob)
            for paths, score in best
            for path, log_prob in options
        ]
        best = sorted(pairs, key=lambda pair: -pair[1])[:k]
    empty = numpy.zeros(0, dtype="int64")
    return [(numpy.concatenate([empty, *paths]), score) for paths, score in best]


def span_tags(
    labels: numpy.ndarray, lengths: numpy.ndarray, scheme: str
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Tag ids `(E, L)` of entities with these label indices and lengths (padded with -1),
    and the id that would continue each (BIO: B I...; BILUO: U alone, or B I... L)."""
    width = 2 if scheme == "BIO" else 4
    base = (1 + labels * width)[:, None]  # shape: (E, 1)
    position = numpy.arange(max(int(lengths.max(initial=0)), 1))[None, :]  # shape: (1, L)
    size = lengths[:, None]
    prefix = numpy.where(position == 0, 0, 1)  # B, then I
    if width == 4:
        prefix = numpy.where((position == size - 1) & (size > 1), 2, prefix)  # L
        prefix = numpy.where(size == 1, 3, prefix)  # U
    tags = numpy.where(position < size, base + prefix, -1)
    return tags, base[:, 0] + 1
