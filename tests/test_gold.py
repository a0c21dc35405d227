"""Gold tag ids: the fast path (same words) equals spaCy's alignment on random examples."""

import random

import pytest
import spacy
from spacy.tokens import Doc
from spacy.training import Example

from spacy_bilstm_crf.train.gold import UnknownLabelError, _aligned_tag_ids, gold_tag_ids

# "person" and "group" hash above 2**63, "location" below: both halves of uint64.
LABELS = ["location", "person", "group", "PER"]
WORDS = ["a", "b", " ", "c", "d", "\n"]


def random_example(rng: random.Random, nlp: spacy.Language) -> Example:
    """A doc of random words (whitespace tokens too) with random entities, some tokens
    missing annotation, and the predicted doc with the same words."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 9))]
    tags: list[str | None] = []
    while len(tags) < len(words):
        kind, i = rng.random(), len(tags)
        if kind < 0.3 and not words[i].isspace():
            label = rng.choice(LABELS)
            length = rng.randint(1, min(3, len(words) - i))
            tags += [f"B-{label}"] + [f"I-{label}"] * (length - 1)
        else:
            tags.append("O" if kind < 0.8 else None)
    reference = Doc(nlp.vocab, words=words, ents=tags)
    return Example(Doc(nlp.vocab, words=words), reference)


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_fast_path_equals_alignment(scheme: str) -> None:
    nlp = spacy.blank("en")
    rng = random.Random(0)
    for _ in range(300):
        example = random_example(rng, nlp)
        fast = gold_tag_ids(example, LABELS, scheme)
        assert fast.tolist() == _aligned_tag_ids(example, LABELS, scheme).tolist()


def test_labels_of_either_hash_half_are_found() -> None:
    nlp = spacy.blank("en")
    doc = nlp.make_doc("I met John Smith in Paris")
    example = Example.from_dict(doc, {"entities": [(6, 16, "person"), (20, 25, "location")]})
    # O, then B I per label in order (location, person): person is 3-4, location 1-2.
    assert gold_tag_ids(example, ["location", "person"], "BIO").tolist() == [0, 0, 3, 4, 0, 1]


@pytest.mark.parametrize("label", ["group", "location"])
def test_unknown_label_is_named(label: str) -> None:
    nlp = spacy.blank("en")
    doc = nlp.make_doc("I met John Smith")
    example = Example.from_dict(doc, {"entities": [(6, 16, label)]})
    with pytest.raises(UnknownLabelError) as err:
        gold_tag_ids(example, ["person"], "BILUO")
    assert err.value.label == label
