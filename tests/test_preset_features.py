"""`BiLSTMCRF.v2`, the tagger that reads the presets: the random gold presets it is trained
with (against brute force over every completion of the missing annotation), the features it
reads, that training teaches it to use them (a task the CRF's transitions cannot do), and its
life as a component (round trips, `pipe` equals `__call__`, partial annotation)."""

import itertools
import random
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import fix_random_seed
from thinc.api import NumpyOps

from spacy_bilstm_crf.ml import bilstm_crf as bilstm_crf_model
from spacy_bilstm_crf.ml import preset_features
from spacy_bilstm_crf.tag_sets import TagSets
from spacy_bilstm_crf.tags import is_valid, tag_names
from spacy_bilstm_crf.train.random_presets import known_entities, random_presets

TOK2VEC = {
    "@architectures": "spacy-bilstm-crf.WordCharEmbed.v2",
    "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
    "rows": [100, 50, 50, 50],
    "widths": [16, 8, 8, 8],
    "char_width": 8,
    "char_count": 4,
    "word_dropout": 0.0,
}
TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]

pytestmark = pytest.mark.xdist_group("preset_features")


def model_config(version: str = "v2", **settings) -> dict:
    return {
        "@architectures": f"spacy-bilstm-crf.BiLSTMCRF.{version}",
        "hidden_width": 32,
        "tok2vec": TOK2VEC,
        **settings,
    }


def make_nlp(version: str = "v2", **settings) -> Language:
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config={"model": model_config(version, **settings)})
    return nlp


@pytest.fixture(scope="module")
def trained() -> Language:
    """A small v2 pipeline overfit on TRAIN_DATA with the default random presets."""
    fix_random_seed(0)
    nlp = make_nlp()
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(100):
        nlp.update(examples, sgd=optimizer)
    return nlp


def ents(doc: Doc) -> list[tuple[int, int, str]]:
    return [(ent.start, ent.end, ent.label_) for ent in doc.ents]


def entities_of(tags: list[str]) -> set[tuple[int, int, str]]:
    """The entities of a valid BIO or BILUO tag sequence."""
    found, start = set(), None
    for i, tag in enumerate([*tags, "O"]):
        prefix, label = (tag, "") if tag == "O" else tag.split("-", 1)
        if start is not None and prefix not in ("I", "L"):
            found.add((start, i, tags[start].split("-", 1)[1]))
            start = None
        if prefix in ("B", "U"):
            start = i
        if prefix in ("L", "U"):
            found.add((start, i + 1, label))
            start = None
    return found


def valid_sequences(names: list[str], length: int, scheme: str) -> list[tuple[int, ...]]:
    return [
        ids
        for ids in itertools.product(range(len(names)), repeat=length)
        if is_valid([names[i] for i in ids], scheme)
    ]


def partial_gold(names: list[str], scheme: str, rng: random.Random, length: int) -> list[int]:
    """A valid tag sequence whose outside tokens are missing (-1) at random, as spaCy's docs
    leave annotation missing: never on an entity's tokens."""
    ids = list(rng.choice(valid_sequences(names, length, scheme)))
    return [-1 if i == 0 and rng.random() < 0.4 else i for i in ids]


def completions(names: list[str], ids: list[int], scheme: str) -> list[tuple[int, ...]]:
    """Every valid tag sequence that agrees with the known tags of `ids`."""
    return [
        path
        for path in valid_sequences(names, len(ids), scheme)
        if all(i in (-1, p) for i, p in zip(ids, path))
    ]


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_known_entities_are_those_of_every_completion(scheme: str) -> None:
    names = tag_names(["A", "B"], scheme)
    rng = random.Random(0)
    for trial in range(60):
        ids = partial_gold(names, scheme, rng, rng.randint(1, 5))
        each = [entities_of([names[i] for i in path]) for path in completions(names, ids, scheme)]
        expected = set.intersection(*each)
        found = {(s, e, ["A", "B"][label]) for s, e, label in known_entities(ids, scheme)}
        assert found == expected, (trial, ids)


class ShowAll:
    """A stand-in for numpy's generator that shows every doc all of its known annotation."""

    def random(self, size: int | None = None):
        return 0.0 if size is None else numpy.zeros(size)

    def uniform(self, low: float, high: float) -> float:
        return 1.0


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_random_presets_never_contradict_the_known_annotation(scheme: str) -> None:
    """Every completion of the missing tags is allowed by the sets shown (they say only what
    the annotation knows); shown all of a fully known doc, only its gold path is left."""
    labels = ["A", "B"]
    names = tag_names(labels, scheme)
    rng, generator = random.Random(1), numpy.random.default_rng(1)
    clicks = {label: numpy.asarray([n[2:] == label for n in names]) for label in labels}
    clicked = 0
    for trial in range(80):
        ids = partial_gold(names, scheme, rng, rng.randint(1, 5))
        sets = random_presets(ids, labels, scheme, 1.0, 1.0, generator)
        for path in completions(names, ids, scheme):
            assert sets[numpy.arange(len(ids)), path].all(), (trial, ids, path)
        clicked += sum((row == click).all() for row in sets for click in clicks.values())
        full = list(completions(names, ids, scheme)[0])
        shown = random_presets(full, labels, scheme, 1.0, 1.0, ShowAll())
        left = [
            path
            for path in valid_sequences(names, len(full), scheme)
            if shown[numpy.arange(len(full)), path].all()
        ]
        assert left == [tuple(full)], (trial, full)
    assert clicked  # some entities are shown as a click inside them


def test_missing_tokens_are_never_shown_as_outside() -> None:
    labels = ["A"]
    ids = [-1, 0, 1, 2, -1, 0, -1]  # BIO: O?, O, B-A, I-A, ?, O, ?
    sets = random_presets(ids, labels, "BIO", 1.0, 1.0, ShowAll())
    assert sets[[0, 4, 6]].all()  # missing: free, and the B-I entity before a gap not shown
    assert sets[[1, 5]].tolist() == [[True, False, False]] * 2
    assert sets[[2, 3]].all()


def test_random_presets_follow_their_rates() -> None:
    labels, scheme = ["A"], "BILUO"
    ids = [4, 0] * 50  # U-A O, 50 entities and 50 outside tokens
    generator = numpy.random.default_rng(0)
    assert all(random_presets(ids, labels, scheme, 0.0, 1.0, generator) is None for _ in range(50))
    drawn = [random_presets(ids, labels, scheme, 0.3, 0.5, generator, 0.0) for _ in range(2000)]
    shown = [sets for sets in drawn if sets is not None]
    assert len(shown) / len(drawn) == pytest.approx(0.3, abs=0.03)
    fixed = numpy.asarray([(sets.sum(1) == 1).mean() for sets in shown])  # one tag left
    assert fixed.max() < 0.7 and fixed.mean() == pytest.approx(0.25, abs=0.02)
    assert random_presets([], labels, scheme, 1.0, 1.0, generator) is None


def test_a_checked_stretch_is_a_prefix_of_the_doc() -> None:
    """With no rate, what is shown is all that is known before a random token."""
    ids = [4, 0, 1, 3, 0] * 10  # BILUO, one label: U-A O B-A L-A O
    generator = numpy.random.default_rng(0)
    reads = set()
    for _ in range(200):
        sets = random_presets(ids, ["A"], "BILUO", 1.0, 0.0, generator, 0.5)
        fixed = sets.sum(1) == 1  # shape: (T,)
        read = int(fixed.sum())  # an entity the stretch cuts is not shown
        assert fixed[:read].all() and not fixed[read:].any()
        reads.add(read)
    assert 0 in reads and len(reads) > 10


def test_features_are_the_tags_ruled_out() -> None:
    ops = NumpyOps()
    sets = TagSets(["A"], 4, "BILUO").entity(1, 3, "A").outside(0, 1).allowed
    features = preset_features.features(ops, sets, 4, 5)
    assert features.dtype == numpy.float32
    assert features.tolist() == (~sets).astype(float).tolist()
    assert features[3].tolist() == [0, 0, 1, 1, 0]  # after the entity: it does not go on
    assert not preset_features.features(ops, None, 3, 5).any()
    with pytest.raises(ValueError, match="shape"):
        preset_features.features(ops, sets, 3, 5)


def test_bad_rates_are_named() -> None:
    with pytest.raises(Exception, match=r"preset_rate must be in \[0, 1\]"):
        make_nlp(preset_rate=1.5)


def test_v1_reads_no_presets_and_v2_reads_a_column_per_tag(trained: Language) -> None:
    v1 = make_nlp("v1")
    v1.initialize(lambda: [Example.from_dict(v1.make_doc(t), a) for t, a in TRAIN_DATA])
    for nlp, extra in ((v1, 0), (trained, len(trained.get_pipe("bilstm_crf").tag_names))):
        model = nlp.get_pipe("bilstm_crf").model
        assert preset_features.reads_presets(model) == bool(extra)
        assert bilstm_crf_model.torch_module(model).undropped == extra
        tagger_width = model.get_ref("tagger").get_dim("nI")
        assert tagger_width == nlp.get_pipe("bilstm_crf").cfg["input_width"] + extra
    docs = [v1.make_doc("Shaka Khan")]
    assert preset_features.model_input(v1.get_pipe("bilstm_crf").model, docs) is docs


def test_free_tokens_read_as_no_presets_and_fixed_ones_change_the_scores(
    trained: Language,
) -> None:
    ner = trained.get_pipe("bilstm_crf")
    doc = trained.make_doc("Shaka Khan lives in Berlin.")
    free = numpy.ones((len(doc), len(ner.tag_names)), dtype=bool)
    none = preset_features.predict(ner.model, [doc])[0]
    assert numpy.array_equal(preset_features.predict(ner.model, [doc], [free])[0], none)
    fixed = TagSets(ner.labels, len(doc), "BILUO").entity(4, 5, "PERSON").allowed
    moved = preset_features.predict(ner.model, [doc], [fixed])[0]
    assert not numpy.allclose(moved[:4], none[:4])  # the fix reaches its context
    assert preset_features.predict(ner.model, [trained.make_doc("")]) == []


def spy_on_inputs(monkeypatch: pytest.MonkeyPatch) -> list:
    """What the component hands its model from now on."""
    seen, model_input = [], preset_features.model_input
    monkeypatch.setattr(
        preset_features, "model_input", lambda *args: seen.append(model_input(*args)) or seen[-1]
    )
    return seen


def test_the_component_gives_the_model_what_it_decodes_under(
    trained: Language, monkeypatch: pytest.MonkeyPatch
) -> None:
    ner = trained.get_pipe("bilstm_crf")
    doc = trained.make_doc("Shaka Khan lives in Berlin.")
    doc.set_ents([Span(doc, 4, 5, "PERSON")], default="outside")
    seen = spy_on_inputs(monkeypatch)
    out = ner(doc.copy())
    [inputs] = seen
    expected = TagSets(ner.labels, len(doc), "BILUO").entity(4, 5, "PERSON").allowed
    assert numpy.array_equal(inputs.sets[0], expected)
    assert (4, 5, "PERSON") in ents(out)


def test_update_shows_only_gold_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `update` hands the model: per doc None or tag sets that the gold path satisfies,
    missing annotation left free."""
    nlp = make_nlp(preset_docs=0.5, preset_rate=1.0)
    doc = nlp.make_doc("Shaka Khan lives in Berlin today")
    reference = doc.copy()
    reference.set_ents([Span(reference, 0, 2, "PERSON")], missing=[reference[4:]])
    examples = [Example.from_dict(nlp.make_doc(t), a) for t, a in TRAIN_DATA]
    examples.append(Example(doc, reference))
    optimizer = nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("bilstm_crf")
    seen = spy_on_inputs(monkeypatch)
    fix_random_seed(0)
    for _ in range(20):
        nlp.update(examples, sgd=optimizer)
    assert len(seen) == 20
    shown = 0
    for inputs in seen:
        assert isinstance(inputs, preset_features.PresetInput)
        for eg, sets in zip(examples, inputs.sets):
            if sets is None:
                continue
            shown += 1
            gold = numpy.asarray(ner._gold_ids(eg))
            known = gold >= 0
            assert sets[numpy.flatnonzero(known), gold[known]].all()
            assert sets[~known].all()
    assert 0.3 < shown / (20 * len(examples)) < 0.7


def test_training_with_random_presets_teaches_the_model_to_read_them() -> None:
    """Two names of one random label: given the first, only a model that reads the presets
    can tell the second's (the CRF's transitions do not carry a label across "and")."""
    names = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
    rng = random.Random(0)
    data = []
    for _ in range(40):
        first, second = rng.sample(names, 2)
        label = rng.choice(["PER", "LOC"])
        end = len(first) + 5 + len(second)
        entities = [(0, len(first), label), (end - len(second), end, label)]
        data.append((f"{first} and {second} .", entities))
    right = {}
    for version in ("v1", "v2"):
        fix_random_seed(0)
        rates = {"preset_docs": 1.0, "preset_rate": 1.0} if version == "v2" else {}
        nlp = make_nlp(version, dropout=0.0, **rates)
        examples = [Example.from_dict(nlp.make_doc(t), {"entities": e}) for t, e in data]
        optimizer = nlp.initialize(lambda: examples)
        optimizer.learn_rate = 0.005
        for _ in range(80):
            nlp.update(examples, sgd=optimizer)
        right[version] = 0
        for first, second in itertools.permutations(names, 2):
            for label in ("PER", "LOC"):
                doc = nlp.make_doc(f"{first} and {second} .")
                doc.set_ents([Span(doc, 0, 1, label)], default="outside")
                right[version] += (2, 3, label) in ents(nlp.get_pipe("bilstm_crf")(doc))
    assert right["v1"] <= 40 < 50 <= right["v2"], right  # of 60; chance is 30


def test_round_trips_and_pipe_equal_call_with_presets(trained: Language, tmp_path: Path) -> None:
    texts = [text for text, _ in TRAIN_DATA] + ["Berlin and London and Shaka Khan", ""]

    def with_presets(nlp: Language) -> list[Doc]:
        docs = [nlp.make_doc(text) for text in texts]
        for doc in docs[1::2]:
            if len(doc) > 2:
                doc.set_ents([Span(doc, 2, 3, "LOC")], default="outside")
        return docs

    ner = trained.get_pipe("bilstm_crf")
    expected = [ents(ner(doc)) for doc in with_presets(trained)]
    assert [ents(doc) for doc in ner.pipe(with_presets(trained), batch_size=2)] == expected
    trained.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    fresh = make_nlp()
    fresh.from_bytes(trained.to_bytes())
    for other in (loaded, fresh):
        got = [ents(doc) for doc in other.get_pipe("bilstm_crf").pipe(with_presets(other))]
        assert got == expected
        assert other.get_pipe("bilstm_crf").model.attrs["preset_rate"] == 0.5
    v1 = make_nlp("v1")
    with pytest.raises(ValueError, match="nI"):
        v1.get_pipe("bilstm_crf").from_bytes(ner.to_bytes())


def test_runtime_rates_come_from_the_config_on_load(trained: Language, tmp_path: Path) -> None:
    trained.to_disk(tmp_path / "nlp")
    config = {"components": {"bilstm_crf": {"model": {"preset_docs": 0.2}}}}
    loaded = spacy.load(tmp_path / "nlp", config=config)
    assert preset_features.training_rates(loaded.get_pipe("bilstm_crf").model) == (0.2, 0.5)


def test_missing_annotation_trains() -> None:
    nlp = make_nlp(preset_docs=1.0, preset_rate=1.0)
    doc = nlp.make_doc("Shaka Khan lives in Berlin")
    reference = doc.copy()
    reference.set_ents([Span(reference, 0, 2, "PERSON")], missing=[reference[2:]])
    examples = [Example(doc, reference)] + [
        Example.from_dict(nlp.make_doc(t), a) for t, a in TRAIN_DATA
    ]
    optimizer = nlp.initialize(lambda: examples)
    losses = [nlp.update(examples, sgd=optimizer)["bilstm_crf"] for _ in range(5)]
    assert all(numpy.isfinite(losses)) and losses[-1] < losses[0]
