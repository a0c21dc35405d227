"""`WordCharEmbed.v2`: bytes as spaCy reads them, vectors by ORTH then LOWER, gradients."""

from pathlib import Path

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc
from spacy.training import Example
from spacy.vectors import Vectors
from thinc.api import fix_random_seed

from spacy_bilstm_crf.ml.word_char_embed import (
    build_word_char_embed_v2,
    char_features,
    word_byte_ids,
)

WORDS = ["Paris", "paris", "PARIS", "Zoë", "東京", "a", " ", "Škoda-Ægir", "x" * 30]


def small(**options) -> dict:
    settings = {"attrs": ["NORM", "SHAPE"], "rows": [100, 50], "widths": [8, 4]}
    return {**settings, "char_width": 4, "char_count": 6, **options}


def test_byte_ids_equal_spacys_utf8_array() -> None:
    doc = Doc(spacy.blank("en").vocab, words=WORDS)
    for count in (1, 2, 5, 8, 16):
        assert numpy.array_equal(word_byte_ids(WORDS, count), doc.to_utf8_array(count))


def test_byte_features_equal_a_lookup_per_position() -> None:
    table = numpy.random.default_rng(0).normal(size=(4, 256, 3)).astype("float32")
    ids = word_byte_ids(WORDS, 4)
    out = char_features(table, ids)
    for word in range(len(WORDS)):
        expected = numpy.concatenate([table[c, ids[word, c]] for c in range(4)])
        assert numpy.array_equal(out[word], expected)


def lowercase_vectors(vocab, cased: bool = False) -> Vectors:
    """A GloVe-like table, lowercase keys only; with `cased`, also a row for "Apple"."""
    data = numpy.arange(12, dtype="float32").reshape(3, 4)
    keys = ["paris", "london", "the"]
    if cased:
        data = numpy.vstack([data, numpy.full((1, 4), 9.0, dtype="float32")])
        keys.append("Apple")
    return Vectors(strings=vocab.strings, data=data, keys=keys)


def test_vectors_found_by_lowercase_after_save_and_load(tmp_path: Path) -> None:
    """A capitalised word takes its lowercase row, a cased row wins over it, unknown words get
    zeros, and all of it survives saving and loading the pipeline."""
    fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.vocab.vectors = lowercase_vectors(nlp.vocab, cased=True)
    nlp.add_pipe("bilstm_crf", config={"model": {"hidden_width": 16, "tok2vec": small()}})
    examples = [Example.from_dict(nlp.make_doc("Paris and London"), {"entities": [(0, 5, "LOC")]})]
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("bilstm_crf")
    assert ner.cfg["input_width"] == 8 + 4 + 24 + 4  # widths, bytes, the raw vectors

    def vector_columns(pipeline: spacy.Language, words: list[str]) -> numpy.ndarray:
        tok2vec = pipeline.get_pipe("bilstm_crf").model.get_ref("tok2vec")
        return tok2vec.predict([Doc(pipeline.vocab, words=words)])[0][:, -4:]

    words = ["Paris", "PARIS", "paris", "Apple", "apple", "Berlin"]
    expected = numpy.array([[0, 1, 2, 3]] * 3 + [[9] * 4, [0] * 4, [0] * 4], dtype="float32")
    assert numpy.array_equal(vector_columns(nlp, words), expected)
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    assert numpy.array_equal(vector_columns(loaded, words), expected)
    texts = ["Paris and London", "PARIS , London"]
    assert [[(e.start, e.end) for e in d.ents] for d in loaded.pipe(texts)] == [
        [(e.start, e.end) for e in d.ents] for d in nlp.pipe(texts)
    ]


def test_null_uses_vectors_only_when_there_are_some() -> None:
    nlp = spacy.blank("en")
    plain = build_word_char_embed_v2(**small(include_static_vectors=None))
    plain.initialize(X=[nlp("a b")])
    assert plain.get_dim("nO") == 8 + 4 + 24 and plain.get_dim("nV") == 0
    with pytest.raises(ValueError, match="include_static_vectors is true"):
        build_word_char_embed_v2(**small(include_static_vectors=True)).initialize(X=[nlp("a")])
    nlp.vocab.vectors = lowercase_vectors(nlp.vocab)
    projected = build_word_char_embed_v2(**small(include_static_vectors=None, vectors_width=5))
    projected.initialize(X=[nlp("a")])
    assert projected.get_dim("nO") == 8 + 4 + 24 + 5
    off = build_word_char_embed_v2(**small(include_static_vectors=False))
    off.initialize(X=[nlp("a")])
    assert off.get_dim("nO") == 8 + 4 + 24


def test_gradients_reach_the_tables_and_the_projection() -> None:
    """Backprop against finite differences of a linear loss, per parameter table."""
    nlp = spacy.blank("en")
    nlp.vocab.vectors = lowercase_vectors(nlp.vocab)
    model = build_word_char_embed_v2(**small(include_static_vectors=True, vectors_width=3))
    docs = [nlp("Paris the Paris"), nlp(""), nlp("london x")]
    model.initialize(X=docs)
    out, backprop = model.begin_update(docs)
    rng = numpy.random.default_rng(1)
    weights = [rng.normal(size=array.shape).astype("float32") for array in out]
    backprop(weights)
    for node in model.walk():
        for name in node.param_names:
            if not node.has_param(name):
                continue
            param, grad = node.get_param(name), node.get_grad(name)
            index = numpy.unravel_index(numpy.argmax(numpy.abs(grad)), grad.shape)
            before = param[index]
            param[index] = before + 1e-2
            plus = sum((a * w).sum() for a, w in zip(model.predict(docs), weights))
            param[index] = before - 1e-2
            minus = sum((a * w).sum() for a, w in zip(model.predict(docs), weights))
            param[index] = before
            assert (plus - minus) / 2e-2 == pytest.approx(grad[index], rel=1e-2, abs=1e-3)


def test_word_dropout_replaces_norms_in_training_only() -> None:
    nlp = spacy.blank("en")
    docs = [nlp(" ".join(f"w{i}" for i in range(400)))]
    model = build_word_char_embed_v2(**small(word_dropout=0.5))
    model.initialize(X=docs)
    predicted = model.predict(docs)[0]
    assert numpy.array_equal(predicted, model.predict(docs)[0])
    torch.manual_seed(0)
    trained, _ = model.begin_update(docs)
    changed = (trained[0][:, :8] != predicted[:, :8]).any(1)  # the NORM embeddings
    assert 0.4 < changed.mean() < 0.6
    assert numpy.array_equal(trained[0][:, 8:], predicted[:, 8:])  # the rest is untouched


@pytest.mark.parametrize(
    "options,message",
    [
        ({"rows": [100]}, "one entry each"),
        ({"attrs": ["NORM", "COLOUR"]}, "Unknown token attributes"),
        ({"char_width": 0}, "both be positive or both 0"),
        ({"word_dropout": 1.0}, "word_dropout must be in"),
        ({"attrs": ["SHAPE", "PREFIX"], "word_dropout": 0.1}, "replaces the NORM"),
        ({"include_static_vectors": False, "vectors_width": 4}, "vectors_width"),
    ],
)
def test_bad_settings_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_word_char_embed_v2(**small(**options))
