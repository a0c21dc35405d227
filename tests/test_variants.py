"""Tagger variants: GRU, softmax head, CRF + cross-entropy loss, and the BILUO tag scheme."""

import math

import pytest
import spacy
import torch
from spacy.language import Language
from spacy.training import Example

from spacy_bilstm_crf.nn.bilstm import BiLSTMTagger
from spacy_bilstm_crf.tags import allowed_transitions, is_valid, restart_tags, tag_names

TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Shaka lives in New York City.", {"entities": [(0, 5, "PERSON"), (15, 28, "LOC")]}),
]
SMALL = {"hidden_width": 32, "tok2vec": {"widths": [32, 16, 16, 16], "rows": [500, 200, 200, 200]}}
# Two tokens, three tags. Token 1 scores [0, 0, 0] with tag 0: cross-entropy ln 3. Token 2
# scores [ln 2, 0, 0] with tag 0: -ln(2 / 4) = ln 2. Token 3 is unknown (-1) and costs nothing.
SCORES = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [5.0, -3.0, 1.0]]])
TAGS = torch.tensor([[0, 0, -1]])
MASK = torch.tensor([[True, True, True]])


def tagger(**options) -> BiLSTMTagger:
    module = BiLSTMTagger(4, 8, 3, **options)
    with torch.no_grad():  # zero transitions: the CRF factorises into per-token softmaxes
        for param in module.crf.parameters():
            param.zero_()
    return module


def test_softmax_head_loss_is_token_cross_entropy() -> None:
    module = tagger(head="softmax")
    assert module.loss(SCORES, TAGS, MASK).item() == pytest.approx(math.log(6.0))


def test_crf_with_zero_transitions_equals_cross_entropy() -> None:
    assert tagger().loss(SCORES, TAGS, MASK).item() == pytest.approx(math.log(6.0))


def test_crf_plus_ce_loss_uses_uncertainty_weights() -> None:
    module = tagger(loss="crf+ce")
    # s = (1, 1): 0.5 * ln 6 + ln 2 twice = ln 6 + 2 ln 2 = ln 24.
    assert module.loss(SCORES, TAGS, MASK).item() == pytest.approx(math.log(24.0))
    with torch.no_grad():
        module.loss_scales.copy_(torch.tensor([2.0, 0.5]))
    # 0.5 / 4 * ln 6 + ln 5 + 0.5 / 0.25 * ln 6 + ln 1.25
    expected = 2.125 * math.log(6.0) + math.log(5.0) + math.log(1.25)
    loss = module.loss(SCORES, TAGS, MASK)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert module.loss_scales.grad is not None and module.loss_scales.grad.abs().sum() > 0


def test_softmax_decode_reports_invalid_sequences() -> None:
    tags = tag_names(["X"])
    module = BiLSTMTagger(4, 8, len(tags), allowed=allowed_transitions(tags), head="softmax")
    scores = torch.tensor([[[0.0, 0.0, 9.0], [9.0, 0.0, 0.0]], [[0.0, 9.0, 0.0], [0.0, 0.0, 9.0]]])
    paths, invalid = module.decode(scores, torch.ones(2, 2, dtype=torch.bool))
    assert paths.tolist() == [[2, 0], [1, 2]]  # I-X first is invalid; B-X I-X is fine
    assert invalid.tolist() == [True, False]
    crf_module = BiLSTMTagger(4, 8, len(tags), allowed=allowed_transitions(tags))
    paths, invalid = crf_module.decode(scores, torch.ones(2, 2, dtype=torch.bool))
    assert not invalid.any()


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="rnn must be one of"):
        BiLSTMTagger(4, 8, 3, rnn="transformer")
    with pytest.raises(ValueError, match="head must be one of"):
        BiLSTMTagger(4, 8, 3, head="mlp")
    with pytest.raises(ValueError, match="needs head='crf'"):
        BiLSTMTagger(4, 8, 3, head="softmax", loss="crf+ce")
    with pytest.raises(ValueError, match="scheme must be one of"):
        spacy.blank("en").add_pipe("bilstm_crf", config={"scheme": "IOE"})


def test_biluo_restarts() -> None:
    tags = tag_names(["X"], "BILUO")  # O B-X I-X L-X U-X
    first, last = restart_tags(tags, "BILUO")
    assert first == {2: 1, 3: 4}
    assert last == {1: 4, 2: 3}
    assert restart_tags(tag_names(["X"]), "BIO") == ({2: 1}, {})


def train(model: dict, scheme: str = "BIO", steps: int = 120) -> Language:
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config={"model": {**SMALL, **model}, "scheme": scheme})
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


@pytest.mark.parametrize(
    "model,scheme",
    [
        ({"rnn": "gru"}, "BIO"),
        ({"head": "softmax"}, "BIO"),
        ({"loss": "crf+ce"}, "BIO"),
        ({}, "BILUO"),
        ({"head": "softmax"}, "BILUO"),
    ],
)
def test_each_variant_learns_valid_entities(model: dict, scheme: str) -> None:
    nlp = train(model, scheme)
    ner = nlp.get_pipe("bilstm_crf")
    for text, annotations in TRAIN_DATA:
        doc = nlp(text)
        found = [(e.start_char, e.end_char, e.label_) for e in doc.ents]
        assert found == [tuple(e) for e in annotations["entities"]]
    docs = [nlp.make_doc(text) for text in ["a b c", "New York City Khan Berlin", "?"]]
    for ids in ner.predict(docs).tags:
        if model.get("head") != "softmax":
            assert is_valid([ner.tag_names[i] for i in ids], scheme)
    assert ner.decode_stats["sequences"] > 0


def test_biluo_round_trip(tmp_path) -> None:
    nlp = train({}, "BILUO", steps=40)
    texts = [text for text, _ in TRAIN_DATA]
    expected = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    ner = loaded.get_pipe("bilstm_crf")
    assert ner.tag_names == tag_names(ner.labels, "BILUO")
    assert ner.tag_names[1:5] == ["B-PERSON", "I-PERSON", "L-PERSON", "U-PERSON"]
    found = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in loaded.pipe(texts)]
    assert found == expected
