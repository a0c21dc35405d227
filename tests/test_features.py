"""The token features: word dropout, static vectors and their configuration errors."""

import numpy
import pytest
import spacy
from thinc.api import fix_random_seed

from spacy_bilstm_crf.ml.word_char_embed_v1 import UNKNOWN_NORM, build_word_char_embed, drop_norms


def test_word_dropout_replaces_norms_of_copies_at_the_rate() -> None:
    nlp = spacy.blank("en")
    docs = [nlp(" ".join(f"word{i}" for i in range(500))) for _ in range(4)]
    fix_random_seed(0)
    out, backprop = drop_norms(0.2)(docs, is_train=True)
    dropped = [token.norm_ == UNKNOWN_NORM for doc in out for token in doc]
    assert 0.15 < numpy.mean(dropped) < 0.25
    kept = [(a.norm_, a.text) for doc in out for a in doc if a.norm_ != UNKNOWN_NORM]
    assert all(norm == text for norm, text in kept)
    assert all(token.norm_ != UNKNOWN_NORM for doc in docs for token in doc)
    assert [doc.text for doc in out] == [doc.text for doc in docs]
    assert backprop([]) == []


def test_word_dropout_is_off_in_prediction() -> None:
    nlp = spacy.blank("en")
    docs = [nlp("Alpha beta gamma")]
    out, _ = drop_norms(0.9)(docs, is_train=False)
    assert out[0] is docs[0]


def test_word_dropout_changes_training_features_only() -> None:
    nlp = spacy.blank("en")
    docs = [nlp("Peter Blackburn lives in Brussels and Paris")]
    model = build_word_char_embed(32, ["NORM", "SHAPE"], [100, 50], word_dropout=0.5)
    model.initialize(X=docs)
    fix_random_seed(1)
    predicted = model.predict(docs)[0]
    assert numpy.array_equal(predicted, model.predict(docs)[0])
    trained, _ = model.begin_update(docs)
    assert not numpy.allclose(trained[0], predicted)


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_word_dropout_rate_out_of_range(rate: float) -> None:
    with pytest.raises(ValueError, match="word_dropout"):
        build_word_char_embed(32, ["NORM"], [100], word_dropout=rate)


def test_word_dropout_needs_norm() -> None:
    with pytest.raises(ValueError, match="NORM"):
        build_word_char_embed(32, ["LOWER", "SHAPE"], [100, 50], word_dropout=0.1)


def test_static_vectors_need_vectors_in_the_vocab() -> None:
    nlp = spacy.blank("en")
    model = build_word_char_embed(32, ["NORM"], [100], include_static_vectors=True)
    with pytest.raises(ValueError, match="include_static_vectors is true, but the vocab has no"):
        model.initialize(X=[nlp("Paris is nice")])


def test_static_vectors_reach_the_features() -> None:
    """Words with the same shape and first and last characters differ only by their vectors; a
    word without a vector gets what an all-zero vector gives."""
    nlp = spacy.blank("en")
    nlp.vocab.set_vector("Bern", numpy.ones(8, dtype="float32"))
    nlp.vocab.set_vector("Born", -numpy.ones(8, dtype="float32"))
    fix_random_seed(0)
    model = build_word_char_embed(32, ["SHAPE"], [50], include_static_vectors=True, char_count=2)
    docs = [nlp("Bern"), nlp("Born"), nlp("Bonn")]
    model.initialize(X=docs)
    bern, born, bonn = (vectors[0] for vectors in model.predict(docs))
    assert not numpy.allclose(bern, born)
    nlp.vocab.set_vector("Bonn", numpy.zeros(8, dtype="float32"))
    assert numpy.allclose(model.predict([nlp("Bonn")])[0][0], bonn)
    nlp.vocab.set_vector("Bonn", numpy.ones(8, dtype="float32"))
    assert numpy.allclose(model.predict([nlp("Bonn")])[0][0], bern)
