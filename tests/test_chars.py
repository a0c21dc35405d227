"""The character CNN: exact output against a hand-computed convolution, byte ids, training
and serialisation inside the word features, and bad settings."""

import numpy
import pytest
import spacy
import torch
from thinc.api import Adam, fix_random_seed

from spacy_bilstm_crf.ml.char_cnn import PAD, CharCNN, build_char_cnn, word_bytes
from spacy_bilstm_crf.ml.word_char_embed_v1 import build_word_char_embed


def brute_force(module: CharCNN, ids: list[int]) -> numpy.ndarray:
    """Max over the word's positions of the convolution, written out as loops."""
    table = module.embed.weight.detach().numpy()
    weight = module.conv.weight.detach().numpy()  # (width, char_dim, kernel)
    bias = module.conv.bias.detach().numpy()
    half = weight.shape[2] // 2
    rows = [table[i] if i != PAD else numpy.zeros(table.shape[1]) for i in ids]
    best = numpy.full(weight.shape[0], -numpy.inf)
    for position in range(len(ids)):
        if ids[position] == PAD:
            continue
        value = bias.copy()
        for k in range(weight.shape[2]):
            source = position + k - half
            if 0 <= source < len(ids):
                value += weight[:, :, k] @ rows[source]
        best = numpy.maximum(best, value)
    return best


def test_char_cnn_equals_brute_force() -> None:
    torch.manual_seed(0)
    module = CharCNN(width=5, char_dim=4, kernel=3).eval()
    ids = torch.tensor(word_bytes(["Blackburn", "a", "Zürich"], 8))
    out = module(ids).detach().numpy()
    for row, word_ids in zip(out, ids.tolist()):
        numpy.testing.assert_allclose(row, brute_force(module, word_ids), rtol=1e-5, atol=1e-6)


def test_padding_length_does_not_change_features() -> None:
    torch.manual_seed(0)
    module = CharCNN(width=6, char_dim=4, kernel=5).eval()
    short = module(torch.tensor(word_bytes(["Leeds", "FC"], 6)))
    long = module(torch.tensor(word_bytes(["Leeds", "FC"], 30)))
    torch.testing.assert_close(short, long)


def test_word_bytes_keeps_both_ends_of_long_words() -> None:
    ids = word_bytes(["abcdefghij", "é", ""], 6)
    assert ids[0].tolist() == [ord(c) + 1 for c in "abchij"]
    assert ids[1].tolist() == [0xC3 + 1, 0xA9 + 1, 0, 0, 0, 0]
    assert ids[2].tolist() == [PAD] * 6
    assert CharCNN(width=3)(torch.tensor(ids[2:])).tolist() == [[0.0, 0.0, 0.0]]


def test_char_cnn_layer_shapes_and_empty_docs() -> None:
    nlp = spacy.blank("en")
    docs = [nlp("Peter Blackburn"), nlp(""), nlp("in Brussels today")]
    layer = build_char_cnn(7)
    layer.initialize(X=docs)
    assert [out.shape for out in layer.predict(docs)] == [(2, 7), (0, 7), (3, 7)]
    assert [out.shape for out in layer.predict([nlp("")])] == [(0, 7)]


def test_word_features_with_char_cnn_train_and_round_trip() -> None:
    fix_random_seed(0)
    nlp = spacy.blank("en")
    docs = [nlp("Peter Blackburn lives in Brussels"), nlp("Zürich")]
    model = build_word_char_embed(16, ["NORM", "SHAPE"], [100, 50], char_cnn_width=12)
    model.initialize(X=docs)
    assert model.get_dim("nO") == 16 + 16 * 8 + 12
    assert [out.shape[1] for out in model.predict(docs)] == [156, 156]
    cnn = model.layers[-1].layers[0]
    before = [param.detach().clone() for param in cnn.shims[0]._model.parameters()]
    optimizer = Adam(0.01)
    for _ in range(3):
        out, backprop = model.begin_update(docs)
        backprop([numpy.ones_like(array) for array in out])
        model.finish_update(optimizer)
    after = list(cnn.shims[0]._model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    copy = build_word_char_embed(16, ["NORM", "SHAPE"], [100, 50], char_cnn_width=12)
    copy.initialize(X=docs)
    copy.from_bytes(model.to_bytes())
    for a, b in zip(model.predict(docs), copy.predict(docs)):
        numpy.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"width": 0}, "width"),
        ({"width": 4, "kernel": 2}, "kernel"),
        ({"width": 4, "char_dim": 0}, "char_dim"),
    ],
)
def test_bad_cnn_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CharCNN(**kwargs)


def test_bad_feature_settings_are_named() -> None:
    with pytest.raises(ValueError, match="char_cnn_width"):
        build_word_char_embed(16, ["NORM"], [100], char_cnn_width=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        build_char_cnn(4, max_bytes=0)
