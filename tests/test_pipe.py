"""The `bilstm_crf` component: lifecycle, learning, serialization, odd input and bad use."""

import itertools
import pickle
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example

from spacy_bilstm_crf.ml import bilstm_crf as bilstm_crf_model
from spacy_bilstm_crf.tags import is_valid

TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]
# These tests look at BIO tag ids; tests/test_variants.py covers BILUO, the default.
SMALL_MODEL = {
    "scheme": "BIO",
    "model": {
        "hidden_width": 32,
        "tok2vec": {"widths": [32, 16, 16, 16], "rows": [500, 200, 200, 200], "char_width": 8},
    },
}


def make_nlp(**config) -> Language:
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config={**SMALL_MODEL, **config})
    return nlp


def examples_for(nlp: Language):
    return [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]


# One worker runs this file's tests, so that its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("pipe")


@pytest.fixture(scope="module")
def trained() -> Language:
    """A small pipeline overfit on TRAIN_DATA."""
    torch.manual_seed(0)
    nlp = make_nlp()
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(100):
        nlp.update(examples, sgd=optimizer)
    return nlp


def ents(doc: Doc):
    return [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]


def test_overfitting_predicts_training_entities(trained: Language) -> None:
    for text, annotations in TRAIN_DATA:
        assert ents(trained(text)) == [tuple(e) for e in annotations["entities"]]
    scores = trained.evaluate(examples_for(trained))
    assert scores["ents_f"] == 1.0
    assert set(scores["ents_per_type"]) == {"PERSON", "LOC"}


def test_training_moves_every_part_of_the_model() -> None:
    torch.manual_seed(0)
    nlp = make_nlp()
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("bilstm_crf")
    module = bilstm_crf_model.torch_module(ner.model)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    embed_before = [p.copy() for p in _thinc_params(ner.model.get_ref("tok2vec"))]
    losses = [nlp.update(examples, sgd=optimizer)["bilstm_crf"] for _ in range(5)]
    assert losses[-1] < losses[0]
    for name, param in module.named_parameters():
        assert not torch.equal(before[name], param), f"{name} was not trained"
    embed_after = _thinc_params(ner.model.get_ref("tok2vec"))
    assert any(not numpy.array_equal(a, b) for a, b in zip(embed_before, embed_after))


def _thinc_params(model):
    return [
        node.get_param(name)
        for node in model.walk()
        for name in node.param_names
        if node.has_param(name)
    ]


def test_pipe_equals_call_and_batches_mix_odd_docs(trained: Language) -> None:
    texts = [
        "",
        "Berlin",
        "   ",
        "Shaka Khan  \n  lives in   Berlin .",
        "Zoë Ægir visited Škoda in Малмö — 東京!",
        "\n",
    ] + [text for text, _ in TRAIN_DATA]
    one_by_one = [ents(trained(text)) for text in texts]
    assert [ents(doc) for doc in trained.pipe(texts, batch_size=3)] == one_by_one
    for doc in trained.pipe(texts):
        assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)
        for ent in doc.ents:
            assert not ent[0].is_space and not ent[-1].is_space


def test_entities_never_start_or_end_on_whitespace(trained: Language) -> None:
    ner = trained.get_pipe("bilstm_crf")
    doc = trained.make_doc("Shaka Khan  lives")
    assert doc[2].is_space
    b_person, i_person = ner.tag_names.index("B-PERSON"), ner.tag_names.index("I-PERSON")
    ner.set_annotations([doc], _predictions([[b_person, i_person, i_person, 0]]))
    assert ents(doc) == [(0, 10, "PERSON")]
    doc = trained.make_doc("  Berlin")
    ner.set_annotations([doc], _predictions([[b_person, i_person]]))
    assert ents(doc) == [(2, 8, "PERSON")]


def _predictions(tags):
    from spacy_bilstm_crf.pipeline.bilstm_crf import Predictions

    return Predictions(tags, None)


def test_long_doc_is_segmented_and_fully_tagged(trained: Language) -> None:
    words = ["Shaka", "Khan", "lives", "in", "Berlin", "."] * 16_667
    doc = Doc(trained.vocab, words=words[:100_000])
    doc = trained(doc)
    assert len(doc) == 100_000
    assert all(token.ent_iob != 0 for token in doc)
    assert ents(doc)[:2] == [(0, 10, "PERSON"), (20, 26, "LOC")]
    assert len(doc.ents) > 30_000


def test_existing_entities_survive_unless_overwrite(trained: Language) -> None:
    ruler = trained.add_pipe("entity_ruler", before="bilstm_crf")
    ruler.add_patterns([{"label": "ORG", "pattern": "Shaka"}])
    try:
        doc = trained("Shaka Khan lives in Berlin.")
        assert ents(doc) == [(0, 5, "ORG"), (20, 26, "LOC")]
        trained.get_pipe("bilstm_crf").cfg["overwrite"] = True
        doc = trained("Shaka Khan lives in Berlin.")
        assert ents(doc) == [(0, 10, "PERSON"), (20, 26, "LOC")]
    finally:
        trained.get_pipe("bilstm_crf").cfg["overwrite"] = False
        trained.remove_pipe("entity_ruler")


def test_confidence_spans_are_exact_crf_probabilities(trained: Language) -> None:
    ner = trained.get_pipe("bilstm_crf")
    ner.cfg["confidence"] = True
    try:
        doc = trained("Shaka Khan lives in Berlin.")
        group = doc.spans["bilstm_crf"]
        assert [(s.start_char, s.end_char, s.label_) for s in group] == ents(doc)
        probs = group.attrs["scores"]
    finally:
        ner.cfg["confidence"] = False
    # Brute force: the probability mass of every path that has exactly each entity.
    emissions = torch.as_tensor(ner.model.predict([doc])[0]).double().unsqueeze(0)
    crf = bilstm_crf_model.torch_module(ner.model).crf
    names = ner.tag_names
    paths = torch.tensor(list(itertools.product(range(len(names)), repeat=len(doc))))
    with torch.no_grad():
        crf64 = type(crf)(crf.num_tags, None).double()
        crf64.load_state_dict(
            {k: v.double() if v.is_floating_point() else v for k, v in crf.state_dict().items()}
        )
        scores = crf64.score(emissions.expand(len(paths), -1, -1), paths)
    weights = torch.softmax(scores, 0)
    for span, prob in zip(group, probs):
        begin, inside = names.index(f"B-{span.label_}"), names.index(f"I-{span.label_}")
        exact = (paths[:, span.start] == begin) & (
            paths[:, span.start + 1 : span.end] == inside
        ).all(1)
        if span.end < len(doc):
            exact &= paths[:, span.end] != inside
        assert float(prob) == pytest.approx(float(weights[exact].sum()), rel=1e-4)


def test_round_trip_bytes_and_disk(trained: Language, tmp_path: Path) -> None:
    texts = [text for text, _ in TRAIN_DATA] + ["Berlin and London and Shaka Khan"]
    expected = [ents(doc) for doc in trained.pipe(texts)]
    trained.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    assert [ents(doc) for doc in loaded.pipe(texts)] == expected
    fresh = make_nlp()
    fresh.from_bytes(trained.to_bytes())
    assert [ents(doc) for doc in fresh.pipe(texts)] == expected
    assert fresh.get_pipe("bilstm_crf").labels == trained.get_pipe("bilstm_crf").labels
    restored = pickle.loads(pickle.dumps(trained))
    assert [ents(doc) for doc in restored.pipe(texts)] == expected


def test_load_in_new_process_predicts_the_same(trained: Language, tmp_path: Path) -> None:
    text = "Shaka Khan lives in Berlin and London."
    trained.to_disk(tmp_path / "nlp")
    code = (
        "import spacy, sys; nlp = spacy.load(sys.argv[1]); "
        "print([(e.start_char, e.end_char, e.label_) for e in nlp(sys.argv[2]).ents])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "nlp"), text],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(ents(trained(text)))


def test_multiprocess_pipe(trained: Language) -> None:
    texts = [text for text, _ in TRAIN_DATA] * 4
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a parent with a thread pool: forked workers must not hang
    try:
        expected = [ents(doc) for doc in trained.pipe(texts)]
        assert [ents(doc) for doc in trained.pipe(texts, n_process=2, batch_size=4)] == expected
    finally:
        torch.set_num_threads(threads)


def test_label_mismatch_fails_loudly(trained: Language) -> None:
    other = make_nlp()
    ner = other.get_pipe("bilstm_crf")
    for label in ("A", "B", "C"):
        ner.add_label(label)
    other.initialize()
    with pytest.raises(Exception, match="size mismatch|tags"):
        other.get_pipe("bilstm_crf").from_bytes(trained.get_pipe("bilstm_crf").to_bytes())


def test_initialize_with_given_labels_and_no_examples() -> None:
    nlp = make_nlp()
    unannotated = [Example.from_dict(nlp.make_doc("x y z"), {})]
    nlp.get_pipe("bilstm_crf").initialize(lambda: unannotated, nlp=nlp, labels=["ORG", "PER"])
    ner = nlp.get_pipe("bilstm_crf")
    assert ner.labels == ("ORG", "PER")
    assert ner.tag_names == ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    doc = nlp("Some text here")
    assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)
    assert ner.label_data == ["ORG", "PER"]


def test_errors_out_of_order() -> None:
    nlp = make_nlp()
    with pytest.raises(ValueError, match="not initialized"):
        nlp("Hello Berlin")
    with pytest.raises(ValueError, match="No entity labels"):
        nlp.initialize(lambda: [Example.from_dict(nlp.make_doc("no entities"), {})])
    nlp = make_nlp()
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    with pytest.raises(ValueError, match="already initialized"):
        nlp.get_pipe("bilstm_crf").add_label("ORG")
    with pytest.raises(ValueError, match="Invalid entity label"):
        make_nlp().get_pipe("bilstm_crf").add_label(" ")


def test_unknown_label_in_training_data_is_an_error() -> None:
    nlp = make_nlp()
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    odd = Example.from_dict(nlp.make_doc("Acme Corp"), {"entities": [(0, 9, "ORG")]})
    with pytest.raises(ValueError, match="'ORG' in the training data"):
        nlp.update([odd], sgd=optimizer)


def test_missing_annotation_is_trained_as_unknown() -> None:
    nlp = make_nlp()
    examples = examples_for(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("bilstm_crf")
    doc = nlp.make_doc("Shaka Khan lives in Berlin")
    reference = doc.copy()
    reference.set_ents([Span(reference, 0, 2, "PERSON")], missing=[reference[2:]])
    assert [t.ent_iob for t in reference] == [3, 1, 0, 0, 0]
    names = ner.tag_names
    ids = ner._gold_ids(Example(doc, reference))
    assert ids == [names.index("B-PERSON"), names.index("I-PERSON"), -1, -1, -1]
    # Missing tokens cost nothing whatever the model says there: the loss is that of the
    # annotated prefix alone marginalised over the rest, so it is below the full-O loss.
    scores = ner.model.predict([doc])
    partial, _ = ner.get_loss([Example(doc, reference)], scores)
    full = Example.from_dict(doc, {"entities": [(0, 10, "PERSON")]})
    complete, _ = ner.get_loss([full], scores)
    assert partial < complete


def test_update_skips_empty_batches() -> None:
    nlp = make_nlp()
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    empty = [Example.from_dict(nlp.make_doc(""), {})]
    assert nlp.update(empty, sgd=optimizer)["bilstm_crf"] == 0.0
    mixed = empty + examples
    assert nlp.update(mixed, sgd=optimizer)["bilstm_crf"] > 0.0


def test_decoded_tags_are_valid_bio(trained: Language) -> None:
    ner = trained.get_pipe("bilstm_crf")
    docs = [trained.make_doc(text) for text in ["a b c d e f", "Berlin Khan Shaka", "?"]]
    for ids in ner.predict(docs).tags:
        assert is_valid([ner.tag_names[i] for i in ids])


def test_add_pipe_through_entry_points_in_fresh_process() -> None:
    code = (
        "import spacy, sys\n"
        "nlp = spacy.blank('en'); nlp.add_pipe('bilstm_crf')\n"
        "cfg = nlp.config['components']['bilstm_crf']['model']\n"
        "print(cfg['@architectures'], cfg['tok2vec']['@architectures'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "spacy-bilstm-crf.BiLSTMCRF.v1",
        "spacy-bilstm-crf.WordCharEmbed.v2",
    ]


def test_entry_point_keys_equal_registered_names() -> None:
    from importlib.metadata import entry_points

    from spacy.util import registry

    import spacy_bilstm_crf  # noqa: F401  (registers through the decorators)

    groups = {"spacy_factories": None, "spacy_architectures": registry.architectures}
    for group, table in groups.items():
        points = entry_points(group=group)
        ours = [ep for ep in points if ep.value.startswith("spacy_bilstm_crf")]
        assert ours, f"no entry points in {group}"
        for ep in ours:
            loaded = ep.load()
            if table is None:
                assert ep.name in Language.factories
                assert Language.get_factory_meta(ep.name).factory == ep.name
            else:
                assert table.get(ep.name) is loaded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_trains_and_predicts_on_gpu() -> None:
    spacy.require_gpu()
    try:
        nlp = make_nlp()
        examples = examples_for(nlp)
        optimizer = nlp.initialize(lambda: examples)
        for _ in range(60):
            nlp.update(examples, sgd=optimizer)
        module = bilstm_crf_model.torch_module(nlp.get_pipe("bilstm_crf").model)
        assert {p.device.type for p in module.parameters()} == {"cuda"}
        assert ents(nlp("Shaka Khan lives in Berlin.")) == [(0, 10, "PERSON"), (20, 26, "LOC")]
    finally:
        spacy.require_cpu()


def test_entity_cut_by_a_window_trains_as_two() -> None:
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config={"model": {**SMALL_MODEL["model"], "max_length": 4}})
    text = "we met Shaka Khan Junior Senior there"
    example = Example.from_dict(nlp.make_doc(text), {"entities": [(7, 31, "PERSON")]})
    optimizer = nlp.initialize(lambda: [example])
    losses = nlp.update([example], sgd=optimizer)
    assert numpy.isfinite(losses["bilstm_crf"]) and losses["bilstm_crf"] > 0


def test_trains_a_shared_tok2vec_through_a_listener() -> None:
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "tok2vec",
        config={
            "model": {
                "@architectures": "spacy.Tok2Vec.v2",
                "embed": {
                    "@architectures": "spacy.MultiHashEmbed.v2",
                    "width": 32,
                    "attrs": ["NORM", "SHAPE"],
                    "rows": [500, 100],
                    "include_static_vectors": False,
                },
                "encode": {
                    "@architectures": "spacy.MaxoutWindowEncoder.v2",
                    "width": 32,
                    "depth": 1,
                    "window_size": 1,
                    "maxout_pieces": 2,
                },
            }
        },
    )
    listener = {"@architectures": "spacy.Tok2VecListener.v1", "width": 32, "upstream": "*"}
    nlp.add_pipe("bilstm_crf", config={"model": {"hidden_width": 32, "tok2vec": listener}})
    examples = examples_for(nlp)
    optimizer = nlp.initialize(lambda: examples)
    shared = nlp.get_pipe("tok2vec").model
    before = [p.copy() for p in _thinc_params(shared)]
    for _ in range(60):
        nlp.update(examples, sgd=optimizer)
    assert any(not numpy.array_equal(a, b) for a, b in zip(before, _thinc_params(shared)))
    assert ents(nlp("Shaka Khan lives in Berlin.")) == [(0, 10, "PERSON"), (20, 26, "LOC")]
