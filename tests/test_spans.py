"""Reading entities from tag ids, one sequence at a time and for a batch, against a loop."""

import numpy
import pytest
import spacy
from spacy.tokens import Doc

from spacy_bilstm_crf.pipeline.spans import (
    docs_entities,
    read_entities,
    read_sequences,
    trim_spaces,
)
from spacy_bilstm_crf.tags import tag_names


def loop_entities(names: list[str]) -> list[tuple[int, int, str]]:
    """Entities of tag names the way spaCy reads IOB (L read as I, U as B): one starts at
    every B or U and at an I or L that does not continue an entity of its label."""
    found: list[list] = []
    for i, name in enumerate(names):
        if name == "O":
            continue
        prefix, label = name.split("-", 1)
        if prefix in ("I", "L") and found and found[-1][1] == i and found[-1][2] == label:
            found[-1][1] = i + 1
        else:
            found.append([i, i + 1, label])
    return [(start, end, label) for start, end, label in found]


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_read_entities_matches_a_loop_on_any_tags(scheme: str) -> None:
    labels = ["LOC", "PER"]
    names = tag_names(labels, scheme)
    rng = numpy.random.default_rng(0)
    for _ in range(300):
        ids = rng.integers(0, len(names), size=int(rng.integers(0, 12)))
        found = read_entities(ids, scheme)
        got = [(int(s), int(e), labels[lab]) for s, e, lab in zip(*found)]
        assert got == loop_entities([names[i] for i in ids])


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_a_batch_reads_as_its_sequences_one_by_one(scheme: str) -> None:
    names = tag_names(["LOC", "PER"], scheme)
    rng = numpy.random.default_rng(1)
    for _ in range(100):
        lengths = rng.integers(1, 8, size=int(rng.integers(1, 6)))
        pieces = [rng.integers(0, len(names), size=n) for n in lengths]
        batch = read_sequences(numpy.concatenate(pieces), lengths, scheme)
        expected, offset = [], 0
        for piece in pieces:
            one = read_entities(piece, scheme)
            expected += list(zip(one.starts + offset, one.ends + offset, one.labels))
            offset += len(piece)
        assert list(zip(*batch)) == expected


def test_docs_entities_split_by_doc_and_trim_whitespace() -> None:
    nlp = spacy.blank("en")
    names = tag_names(["LOC"], "BIO")
    docs = [
        Doc(nlp.vocab, words=["in", "New", "York"]),
        Doc(nlp.vocab, words=[]),
        Doc(nlp.vocab, words=["Paris", " ", "Rome"], spaces=[False, False, False]),
    ]
    tags = [
        numpy.asarray([names.index(t) for t in ["O", "B-LOC", "I-LOC"]]),
        numpy.zeros(0, dtype="int64"),
        numpy.asarray([names.index(t) for t in ["B-LOC", "I-LOC", "B-LOC"]]),
    ]
    # The last doc is two segments: an entity does not continue across the cut.
    found = docs_entities(docs, tags, [[3], [], [2, 1]], "BIO")
    as_lists = [[(int(s), int(e)) for s, e, _ in zip(*entities)] for entities, _ in found]
    assert as_lists == [[(1, 3)], [], [(0, 1), (2, 3)]]
    assert [kept.tolist() for _, kept in found] == [[True], [], [True, True]]


def test_an_entity_of_whitespace_only_is_dropped() -> None:
    entities = read_entities(numpy.asarray([1, 2, 0, 1]), "BIO")
    trimmed, kept = trim_spaces(entities, numpy.asarray([True, True, False, False]))
    assert kept.tolist() == [False, True]
    assert list(zip(*trimmed)) == [(3, 4, 0)]
