"""Calibration: metrics against hand computation and brute force, the temperature
fit and its round trip, `threshold`, the n-best groups against every tag path, the oracle F1
and the `calibrate` command."""

import copy
import itertools
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import fix_random_seed

from spacy_bilstm_crf import calibration
from spacy_bilstm_crf.cli import main
from spacy_bilstm_crf.ml.bilstm_crf import torch_module
from spacy_bilstm_crf.pipeline.known_entities import are_known, entity_key

TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]
# Held-out data the model gets partly wrong (the last three have odd gold on purpose), so that
# its probabilities are neither all right nor all wrong.
HELD_OUT = [
    ("Khan lives in London.", {"entities": [(0, 4, "PERSON"), (14, 20, "LOC")]}),
    ("Who likes Berlin and Shaka?", {"entities": [(10, 16, "LOC"), (21, 26, "PERSON")]}),
    ("Shaka Khan and London.", {"entities": [(0, 10, "PERSON"), (15, 21, "LOC")]}),
    ("I see Berlin here.", {"entities": [(6, 12, "LOC")]}),
    ("Nothing lives in Khan.", {"entities": []}),
    ("London is where Shaka Khan is.", {"entities": [(0, 6, "LOC"), (16, 26, "PERSON")]}),
    ("Berlin and London.", {"entities": [(0, 6, "PERSON"), (11, 17, "LOC")]}),
    ("Shaka Khan likes Berlin.", {"entities": [(0, 5, "PERSON"), (17, 23, "LOC")]}),
    ("Khan is in London.", {"entities": [(0, 4, "LOC")]}),
]
SMALL_MODEL = {
    "scheme": "BIO",
    "model": {
        "hidden_width": 32,
        "tok2vec": {"widths": [32, 16, 16, 16], "rows": [500, 200, 200, 200], "char_width": 8},
    },
}
KEY = "bilstm_crf"


def train(steps: int) -> Language:
    """A small BIO pipeline with its bilstm_crf component named "ner", trained `steps` steps."""
    fix_random_seed(0)
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", name="ner", config=SMALL_MODEL)
    examples = examples_for(nlp, TRAIN_DATA)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def examples_for(nlp: Language, data) -> list[Example]:
    return [Example.from_dict(nlp.make_doc(text), ann) for text, ann in data]


# One worker runs this file's tests, so that its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("calibration")


@pytest.fixture(scope="module")
def trained() -> Language:
    return train(100)


@pytest.fixture(scope="module")
def underfit() -> Language:
    """Trained too little: its probabilities are too low, so its temperature is well below 1."""
    return train(60)


@pytest.fixture
def ner(trained: Language):
    """The trained component, its runtime settings restored after the test."""
    pipe = trained.get_pipe("ner")
    saved = dict(pipe.cfg)
    yield pipe
    pipe.cfg.clear()
    pipe.cfg.update(saved)


def ents(doc: Doc) -> list[tuple[int, int, str]]:
    return [(ent.start, ent.end, ent.label_) for ent in doc.ents]


# Metrics on arrays.

PROBS = [0.1, 0.4, 0.45, 0.8, 1.0]
CORRECT = [False, True, False, True, True]


def test_ece_and_brier_by_hand() -> None:
    # Two bins: [0, .5) has .1 .4 .45 (mean .95/3, accuracy 1/3); [.5, 1] has .8 1.0 (mean .9,
    # accuracy 1). ECE = 3/5 |1/3 - .95/3| + 2/5 |1 - .9| = .01 + .04.
    assert calibration.expected_calibration_error(PROBS, CORRECT, bins=2) == pytest.approx(0.05)
    # One bin: |3/5 - 2.75/5|.
    assert calibration.expected_calibration_error(PROBS, CORRECT, bins=1) == pytest.approx(0.05)
    assert calibration.brier_score(PROBS, CORRECT) == pytest.approx(
        (0.01 + 0.36 + 0.2025 + 0.04 + 0.0) / 5
    )
    assert calibration.expected_calibration_error([1.0, 0.0], [True, False]) == 0.0
    assert calibration.expected_calibration_error([0.7] * 10, [True] * 7 + [False] * 3) == (
        pytest.approx(0.0)
    )


def test_log_loss_by_hand() -> None:
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.55) + math.log(0.8) + 0.0) / 5
    assert calibration.log_loss(PROBS, CORRECT) == pytest.approx(expected, abs=1e-6)
    assert math.isfinite(calibration.log_loss([1.0, 0.0], [False, True]))


def test_reliability_bins_by_hand() -> None:
    table = calibration.reliability([0.0, 0.2, 0.25, 0.5, 0.75, 1.0], [1, 0, 1, 1, 0, 1], bins=4)
    assert table.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # An edge belongs to the bin it starts; 1.0 to the last bin.
    assert table.counts.tolist() == [2, 1, 1, 2]
    assert table.confidence.tolist() == pytest.approx([0.1, 0.25, 0.5, 0.875])
    assert table.accuracy.tolist() == pytest.approx([0.5, 1.0, 1.0, 0.5])
    sparse = calibration.reliability([0.05, 0.95], [True, False], bins=10)
    assert sparse.counts.tolist() == [1] + [0] * 8 + [1]
    assert numpy.isnan(sparse.confidence[1:9]).all() and numpy.isnan(sparse.accuracy[1:9]).all()


def test_ece_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(200):
        bins = rng.randint(1, 20)
        edges = numpy.linspace(0.0, 1.0, bins + 1)
        size = rng.randint(1, 30)
        probs = [rng.choice([rng.random(), float(rng.choice(edges))]) for _ in range(size)]
        correct = [rng.random() < 0.6 for _ in range(size)]
        total = 0.0
        for i in range(bins):
            last = i == bins - 1
            inside = [
                j
                for j, p in enumerate(probs)
                if edges[i] <= p and (p < edges[i + 1] or (last and p <= 1.0))
            ]
            if inside:
                confidence = sum(probs[j] for j in inside) / len(inside)
                accuracy = sum(correct[j] for j in inside) / len(inside)
                total += len(inside) / size * abs(accuracy - confidence)
        ece = calibration.expected_calibration_error(probs, correct, bins)
        assert ece == pytest.approx(total, abs=1e-12)
        brier = sum((p - c) ** 2 for p, c in zip(probs, correct)) / size
        assert calibration.brier_score(probs, correct) == pytest.approx(brier, abs=1e-12)


def test_per_label() -> None:
    outcomes = calibration.Outcomes(
        numpy.array(PROBS),
        numpy.array(CORRECT),
        numpy.array(["B", "A", "B", "A", "A"]),
        numpy.zeros(5, dtype=bool),
    )
    scores = calibration.per_label(outcomes, calibration.brier_score)
    assert list(scores) == ["A", "B"]
    assert scores["A"] == pytest.approx((0.36 + 0.04 + 0.0) / 3)
    assert scores["B"] == pytest.approx((0.01 + 0.2025) / 2)


@pytest.mark.parametrize(
    "probs, correct, bins, message",
    [
        ([0.5, 0.5], [True], 15, "one length"),
        ([[0.5]], [[True]], 15, "1-D"),
        ([], [], 15, "No predictions"),
        ([1.5], [True], 15, r"\[0, 1\]"),
        ([-0.1], [True], 15, r"\[0, 1\]"),
        ([math.nan], [True], 15, "NaN"),
        ([0.5], [2], 15, "booleans"),
        ([0.5], [True], 0, "bins"),
        ([0.5], [True], 1.5, "bins"),
    ],
)
def test_metrics_reject_bad_input(probs, correct, bins, message) -> None:
    with pytest.raises(ValueError, match=message):
        calibration.expected_calibration_error(probs, correct, bins)


# Outcomes of a pipeline.


def test_outcomes_accuracy_is_the_scorers_precision(trained: Language, ner) -> None:
    examples = examples_for(trained, HELD_OUT)
    outcomes = calibration.entity_outcomes(trained, examples)
    scores = trained.evaluate(examples)
    assert ner.cfg["confidence"] is False  # switched on for the call only
    assert 0 < outcomes.correct.mean() < 1
    assert outcomes.correct.mean() == pytest.approx(scores["ents_p"])
    predicted = [trained(text) for text, _ in HELD_OUT]
    assert len(outcomes.probs) == sum(len(doc.ents) for doc in predicted)
    assert outcomes.labels.tolist() == [ent.label_ for doc in predicted for ent in doc.ents]
    assert ((outcomes.probs > 0) & (outcomes.probs <= 1)).all()


def test_outcomes_include_entities_an_earlier_component_kept_out(trained: Language) -> None:
    ruler = trained.add_pipe("entity_ruler", before="ner")
    ruler.add_patterns([{"label": "ORG", "pattern": "Shaka"}])
    try:
        examples = examples_for(trained, [("Shaka Khan lives in Berlin.", TRAIN_DATA[2][1])])
        outcomes = calibration.entity_outcomes(trained, examples)
        doc = trained("Shaka Khan lives in Berlin.")
    finally:
        trained.remove_pipe("entity_ruler")
    assert ents(doc) == [(0, 1, "ORG"), (4, 5, "LOC")]
    assert outcomes.labels.tolist() == ["PERSON", "LOC"]
    assert outcomes.correct.tolist() == [True, True]


def test_unknown_or_foreign_component_is_named(trained: Language) -> None:
    examples = examples_for(trained, HELD_OUT[:1])
    with pytest.raises(calibration.CalibrationError, match=r"no component 'tagger'.*\['ner'\]"):
        calibration.entity_outcomes(trained, examples, component="tagger")
    trained.add_pipe("sentencizer")
    try:
        with pytest.raises(calibration.CalibrationError, match="Sentencizer, not a bilstm_crf"):
            calibration.fit_temperature(trained, examples, component="sentencizer")
    finally:
        trained.remove_pipe("sentencizer")


# The temperature.


UNFITTED = {"temperature": 1.0, "seen_temperature": None, "unseen_temperature": None}


def outcomes_at(nlp: Language, examples, temperature: float) -> calibration.Outcomes:
    """The outcomes with every entity at `temperature`."""
    pipe = nlp.get_pipe("ner")
    saved = {key: pipe.cfg[key] for key in UNFITTED}
    pipe.cfg.update(UNFITTED, temperature=temperature)
    try:
        return calibration.entity_outcomes(nlp, examples)
    finally:
        pipe.cfg.update(saved)


def test_fit_temperature_finds_the_log_loss_minimum(underfit: Language) -> None:
    pipe = underfit.get_pipe("ner")
    examples = examples_for(underfit, HELD_OUT)
    # It tags only Berlin and Shaka Khan here, both training entities: say that it saw only
    # Berlin, so that both groups have entities.
    keys = pipe.cfg["known_entities"]
    pipe.cfg["known_entities"] = [entity_key("Berlin")]
    try:
        fitted = calibration.fit_temperature(underfit, examples)
        assert pipe.cfg["temperature"] == fitted
        groups = pipe.cfg["seen_temperature"], pipe.cfg["unseen_temperature"]
        calibrated = calibration.entity_outcomes(underfit, examples)
        grid = numpy.geomspace(0.25, 8.0, 141)  # 2.5% apart
        runs = [outcomes_at(underfit, examples, float(t)) for t in grid]
        at_fit = outcomes_at(underfit, examples, fitted)
        at_groups = [outcomes_at(underfit, examples, t) for t in (fitted, *groups)]
    finally:
        pipe.cfg.update(UNFITTED, known_entities=keys)
    assert 0.25 < fitted < 0.9  # an underfit model is underconfident
    # The global temperature, then one each for entities seen in training and new ones.
    assert 0 < at_fit.known.sum() < len(at_fit.known)
    for chosen, temperature, at_t in zip(
        (numpy.ones_like(at_fit.known), at_fit.known, ~at_fit.known), (fitted, *groups), at_groups
    ):
        losses = [calibration.log_loss(run.probs[chosen], run.correct[chosen]) for run in runs]
        assert calibration.log_loss(at_t.probs[chosen], at_t.correct[chosen]) <= min(losses) + 1e-4
        assert abs(math.log(temperature / grid[int(numpy.argmin(losses))])) <= math.log(1.025)
        # The component gives each entity the probability at its group's temperature.
        if not chosen.all():
            assert calibrated.probs[chosen] == pytest.approx(at_t.probs[chosen], rel=1e-6)
    assert groups[0] != groups[1]
    # The entities, and so what is correct, do not depend on the temperature.
    for run in runs:
        assert run.correct.tolist() == at_fit.correct.tolist()
        assert run.labels.tolist() == at_fit.labels.tolist()
        assert run.known.tolist() == at_fit.known.tolist()


def test_entities_are_known_by_their_training_text(underfit: Language) -> None:
    keys = underfit.get_pipe("ner").cfg["known_entities"]
    assert len(keys) == 3  # Shaka Khan, London, Berlin
    assert keys == sorted(entity_key(text) for text in ("Shaka Khan", "London", "Berlin"))
    outcomes = calibration.entity_outcomes(underfit, examples_for(underfit, HELD_OUT))
    predicted = [ent for text, _ in HELD_OUT for ent in underfit(text).ents]
    expected = [ent.text in ("Shaka Khan", "London", "Berlin") for ent in predicted]
    assert outcomes.known.tolist() == expected and any(expected)
    assert are_known(["shaka  KHAN", "Khan", "Berlin "], keys).tolist() == [
        True,
        False,
        True,
    ]


def test_each_entity_gets_its_groups_temperature_in_cut_docs(underfit: Language) -> None:
    pipe = underfit.get_pipe("ner")
    texts = [text for text, _ in HELD_OUT] + [" ".join(text for text, _ in HELD_OUT)]
    saved = dict(pipe.cfg), pipe.model.attrs["max_length"]
    pipe.model.attrs["max_length"] = 4  # so that entities sit in later segments of a doc
    pipe.cfg.update(confidence=True, known_entities=[entity_key("Berlin")])
    try:
        runs = {}
        for seen, unseen in ((0.5, 0.5), (2.0, 2.0), (0.5, 2.0)):
            pipe.cfg.update(seen_temperature=seen, unseen_temperature=unseen)
            docs = list(underfit.pipe(texts))
            runs[seen, unseen] = [(doc.spans[KEY], doc.spans[KEY].attrs["scores"]) for doc in docs]
    finally:
        pipe.cfg.clear()
        pipe.cfg.update(saved[0])
        pipe.model.attrs["max_length"] = saved[1]
    mixed = [
        (span.text, score) for group, scores in runs[0.5, 2.0] for span, score in zip(group, scores)
    ]
    sharp = [score for _, scores in runs[0.5, 0.5] for score in scores]
    flat = [score for _, scores in runs[2.0, 2.0] for score in scores]
    assert {text for text, _ in mixed} >= {"Berlin", "Shaka Khan"}
    for (text, score), one, other in zip(mixed, sharp, flat):
        assert score == pytest.approx(one if text == "Berlin" else other, rel=1e-6)


def test_fit_without_groups_sets_one_temperature(underfit: Language) -> None:
    pipe = underfit.get_pipe("ner")
    examples = examples_for(underfit, HELD_OUT)
    try:
        fitted = calibration.fit_temperature(underfit, examples, by_seen=False)
        assert pipe.cfg["seen_temperature"] is None and pipe.cfg["unseen_temperature"] is None
        one = calibration.entity_outcomes(underfit, examples)
    finally:
        pipe.cfg.update(UNFITTED)
    assert one.probs.tolist() == pytest.approx(
        outcomes_at(underfit, examples, fitted).probs.tolist()
    )


def test_fit_temperature_stops_at_a_bound_when_every_entity_is_right(trained: Language) -> None:
    pipe = trained.get_pipe("ner")
    try:
        fitted = calibration.fit_temperature(trained, examples_for(trained, TRAIN_DATA))
        assert pipe.cfg["seen_temperature"] is None  # every entity was seen in training
    finally:
        pipe.cfg.update(UNFITTED)
    assert fitted == pytest.approx(0.25)
    with pytest.raises(ValueError, match="bounds"):
        calibration.fit_temperature(trained, examples_for(trained, TRAIN_DATA), bounds=(2, 1))
    nothing = examples_for(trained, [TRAIN_DATA[3]])
    with pytest.raises(calibration.CalibrationError, match="predicts no entities"):
        calibration.fit_temperature(trained, nothing)
    assert pipe.cfg["temperature"] == 1.0


def test_temperature_round_trip(underfit: Language, tmp_path: Path) -> None:
    pipe = underfit.get_pipe("ner")
    texts = [text for text, _ in HELD_OUT]
    raw = outcomes_at(underfit, examples_for(underfit, HELD_OUT), 1.0)
    try:
        fitted = calibration.fit_temperature(underfit, examples_for(underfit, HELD_OUT))
        pipe.cfg["confidence"] = True
        expected = list(underfit.pipe(texts))
        fit = {key: pipe.cfg[key] for key in UNFITTED}
        keys = list(pipe.cfg["known_entities"])
        underfit.to_disk(tmp_path / "nlp")
    finally:
        pipe.cfg.update(UNFITTED, confidence=False)
    loaded = spacy.load(tmp_path / "nlp", config={"components": {"ner": {"confidence": True}}})
    # spaCy writes the cfg as JSON with 10 significant digits.
    assert loaded.get_pipe("ner").cfg["temperature"] == pytest.approx(fitted, rel=1e-9)
    for key, value in fit.items():
        assert loaded.get_pipe("ner").cfg[key] == pytest.approx(value, rel=1e-9)
    assert loaded.get_pipe("ner").cfg["known_entities"] == keys
    assert fitted != 1.0
    docs = list(loaded.pipe(texts))
    assert [ents(doc) for doc in docs] == [ents(doc) for doc in expected]
    scores = numpy.concatenate([doc.spans[KEY].attrs["scores"] for doc in docs])
    calibrated = numpy.concatenate([doc.spans[KEY].attrs["scores"] for doc in expected])
    assert scores.tolist() == pytest.approx(calibrated.tolist(), rel=1e-6)
    assert (numpy.abs(scores - raw.probs) > 0.01).all()


def test_higher_temperature_flattens_the_distribution(trained: Language, ner) -> None:
    ner.cfg.update(confidence=True, nbest=1)
    texts = [text for text, _ in HELD_OUT if text != "Nothing lives in Khan."]
    runs = {}
    for temperature in (0.5, 1.0, 2.0):
        ner.cfg["temperature"] = temperature
        docs = list(trained.pipe(texts))
        runs[temperature] = (
            [ents(doc) for doc in docs],
            numpy.concatenate([doc.spans[KEY].attrs["scores"] for doc in docs]),
            numpy.array([doc.spans[f"{KEY}_nbest_1"].attrs["probability"] for doc in docs]),
        )
    (sharp_ents, sharp, sharp_best), (ents_1, probs, best), (flat_ents, flat, flat_best) = (
        runs[t] for t in (0.5, 1.0, 2.0)
    )
    assert sharp_ents == ents_1 == flat_ents
    assert (sharp_best > best).all() and (best > flat_best).all()
    confident = probs >= 0.5
    assert confident.sum() >= 5
    assert (sharp[confident] > probs[confident]).all()
    assert (flat[confident] < probs[confident]).all()


# The threshold.


def test_threshold_keeps_exactly_the_entities_that_reach_it(trained: Language, ner) -> None:
    ner.cfg["confidence"] = True
    texts = [text for text, _ in HELD_OUT]
    groups = [
        list(zip(doc.spans[KEY], doc.spans[KEY].attrs["scores"])) for doc in trained.pipe(texts)
    ]
    values = sorted({float(score) for group in groups for _, score in group})
    assert len(values) >= 5
    between = [(a + b) / 2 for a, b in zip(values, values[1:])]
    # Thresholds between the scores, and equal to each (an entity whose score is the
    # threshold reaches it).
    for threshold in [0.0, values[0] / 2, *between, *values, (values[-1] + 1) / 2, 1.0]:
        ner.cfg["threshold"] = threshold
        for doc, group in zip(trained.pipe(texts), groups):
            kept = [(s.start, s.end, s.label_) for s, score in group if score >= threshold]
            assert ents(doc) == kept
            assert [(s.start, s.end, s.label_) for s in doc.spans[KEY]] == [
                (s.start, s.end, s.label_) for s, _ in group
            ]


def test_precision_recall_at_equals_evaluate_with_that_threshold(trained: Language, ner) -> None:
    examples = examples_for(trained, HELD_OUT)
    thresholds = [0.0, 0.5, 0.7, 0.8, 0.9, 1.0]
    results = calibration.precision_recall_at(trained, examples, thresholds)
    assert [result.threshold for result in results] == thresholds
    assert ner.cfg["confidence"] is False
    for result in results:
        ner.cfg["threshold"] = result.threshold
        scores = trained.evaluate(examples)
        assert result.precision == pytest.approx(scores["ents_p"])
        assert result.recall == pytest.approx(scores["ents_r"])
        assert result.f1 == pytest.approx(scores["ents_f"])
        assert result.entities == sum(len(trained(eg.text).ents) for eg in examples)
    counts = [result.entities for result in results]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] == 0


# The n best analyses.


def analyses(doc: Doc) -> list:
    """The doc's n-best span groups, rank 1 first."""
    found = []
    while f"{KEY}_nbest_{len(found) + 1}" in doc.spans:
        found.append(doc.spans[f"{KEY}_nbest_{len(found) + 1}"])
    return found


def bio_path(group, names: list[str], length: int) -> tuple[int, ...]:
    """The BIO tag ids that an analysis's spans stand for."""
    tags = [names.index("O")] * length
    for span in group:
        tags[span.start] = names.index(f"B-{span.label_}")
        for i in range(span.start + 1, span.end):
            tags[i] = names.index(f"I-{span.label_}")
    return tuple(tags)


def brute_force_paths(pipe, doc: Doc, temperature: float) -> list[tuple[float, tuple]]:
    """Every tag path of `doc` with its probability under the component's CRF (float64, scores
    divided by `temperature`), most probable first; forbidden paths have probability 0."""
    crf = copy.deepcopy(torch_module(pipe.model).crf).double()
    with torch.no_grad():
        for param in crf.parameters():
            param /= temperature
    emissions = torch.as_tensor(numpy.asarray(pipe.model.predict([doc])[0])).double()
    emissions = emissions.unsqueeze(0) / temperature  # shape: (1, T, K)
    paths = torch.tensor(list(itertools.product(range(crf.num_tags), repeat=len(doc))))
    with torch.no_grad():
        scores = crf.score(emissions.expand(len(paths), -1, -1), paths)  # shape: (P,)
        log_z = crf.log_partition(emissions)  # shape: (1,)
    probs = torch.exp(scores - log_z).tolist()
    return sorted(zip(probs, map(tuple, paths.tolist())), key=lambda item: -item[0])


def test_rank_one_is_doc_ents_and_probabilities_fall(trained: Language, ner) -> None:
    ner.cfg.update(nbest=5, overwrite=True)
    for doc in trained.pipe([text for text, _ in HELD_OUT] + ["", "Berlin"]):
        groups = analyses(doc)
        assert 1 <= len(groups) <= 5
        assert [(s.start, s.end, s.label_) for s in groups[0]] == ents(doc)
        probs = [group.attrs["probability"] for group in groups]
        assert [group.attrs["rank"] for group in groups] == list(range(1, len(groups) + 1))
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("text", ["Shaka Khan lives", "Khan sees London", "Berlin is", "Khan"])
def test_nbest_are_the_most_probable_paths(
    trained: Language, ner, text: str, temperature: float
) -> None:
    k = 10
    ner.cfg.update(nbest=k, overwrite=True, temperature=temperature)
    doc = trained(text)
    assert 1 <= len(doc) <= 3
    expected = brute_force_paths(ner, doc, temperature)
    assert sum(prob for prob, _ in expected) == pytest.approx(1.0)
    allowed = [item for item in expected if item[0] > 0]
    groups = analyses(doc)
    assert len(groups) == min(k, len(allowed))
    by_path = {path: prob for prob, path in expected}
    for rank, group in enumerate(groups):
        path = bio_path(group, ner.tag_names, len(doc))
        assert group.attrs["probability"] == pytest.approx(by_path[path], rel=1e-4)
        # The path of that rank, unless two paths are too close in probability to order.
        want_prob, want_path = allowed[rank]
        assert path == want_path or by_path[path] == pytest.approx(want_prob, rel=1e-5)
    if len(allowed) <= k:
        assert sum(group.attrs["probability"] for group in groups) == pytest.approx(1.0)


def test_nbest_probability_is_exact_on_a_long_doc(trained: Language, ner) -> None:
    ner.cfg.update(nbest=2, overwrite=True, temperature=0.05)
    doc = trained(Doc(trained.vocab, words=["Shaka", "Khan", "lives", "in", "Berlin", "."] * 40))
    best = analyses(doc)[0]
    crf = copy.deepcopy(torch_module(ner.model).crf).double()
    with torch.no_grad():
        for param in crf.parameters():
            param /= 0.05
        emissions = torch.as_tensor(numpy.asarray(ner.model.predict([doc])[0])).double()
        emissions = emissions.unsqueeze(0) / 0.05  # shape: (1, T, K)
        tags = torch.tensor([bio_path(best, ner.tag_names, len(doc))])
        exact = torch.exp(crf.score(emissions, tags) - crf.log_partition(emissions)).item()
    assert best.attrs["probability"] == pytest.approx(exact, rel=1e-3)


def test_entity_probabilities_are_exact_on_a_long_doc(trained: Language, ner) -> None:
    temperature = 0.5
    ner.cfg.update(confidence=True, temperature=temperature)
    doc = trained(" ".join(["Shaka Khan lives in Berlin ."] * 85))
    assert len(doc) == 510  # one segment
    crf = copy.deepcopy(torch_module(ner.model).crf).double()
    with torch.no_grad():
        for param in crf.parameters():
            param /= temperature
    emissions = torch.as_tensor(numpy.asarray(ner.model.predict([doc])[0])).double()
    emissions = emissions.unsqueeze(0) / temperature  # shape: (1, T, K)
    unknown = torch.full(emissions.shape[:2], -1, dtype=torch.long)  # shape: (1, T)
    names = ner.tag_names
    for span, score in zip(doc.spans[KEY], doc.spans[KEY].attrs["scores"]):
        # The paths with exactly this entity: B I... on it, and no I of its label after it.
        begin, inside = names.index(f"B-{span.label_}"), names.index(f"I-{span.label_}")
        candidates = torch.ones_like(emissions, dtype=torch.bool)  # shape: (1, T, K)
        candidates[0, span.start : span.end] = False
        candidates[0, span.start, begin] = True
        candidates[0, span.start + 1 : span.end, inside] = True
        if span.end < len(doc):
            candidates[0, span.end, inside] = False
        with torch.no_grad():
            nll = crf.nll(emissions, unknown, candidates=candidates, infeasible="inf")
        assert float(score) == pytest.approx(math.exp(-nll.item()), abs=1e-5)


# The oracle.

# Two docs of two gold sentences each, besides the one-sentence ones.
MULTI = [
    (
        "Khan likes Berlin. Shaka is in London.",
        {
            "entities": [(0, 4, "PERSON"), (11, 17, "LOC"), (19, 24, "PERSON"), (31, 37, "LOC")],
            "sent_starts": [1, 0, 0, 0, 1, 0, 0, 0, 0],
        },
    ),
    (
        "London and Berlin. Nothing here.",
        {
            "entities": [(0, 6, "LOC"), (11, 17, "PERSON")],
            "sent_starts": [1, 0, 0, 0, 1, 0, 0],
        },
    ),
]


def reference_oracle(nlp: Language, examples, k: int) -> tuple[int, int, int]:
    """True positives, false positives and misses when each gold sentence takes, of its doc's
    first k analyses, the one with the fewest errors in it (the first of equals): with sets."""
    tp = fp = fn = 0
    for eg in examples:
        doc, gold_doc = nlp(eg.reference.text), eg.reference
        assert [t.text for t in doc] == [t.text for t in gold_doc]
        if gold_doc.has_annotation("SENT_START"):
            sentence = {t.i: n for n, sent in enumerate(gold_doc.sents) for t in sent}
        else:
            sentence = {t.i: 0 for t in gold_doc}
        gold = {(e.start, e.end, e.label_) for e in gold_doc.ents}
        candidates = [{(s.start, s.end, s.label_) for s in group} for group in analyses(doc)]
        for n in set(sentence.values()):
            own = {e for e in gold if sentence[e[0]] == n}
            options = [{e for e in c if sentence[e[0]] == n} for c in candidates[:k]]
            best = min(options, key=lambda option: len(option - own) + len(own - option))
            tp, fp, fn = tp + len(best & own), fp + len(best - own), fn + len(own - best)
    return tp, fp, fn


def test_oracle_matches_a_per_sentence_brute_force(trained: Language, ner) -> None:
    examples = examples_for(trained, HELD_OUT + MULTI)
    ks = [1, 2, 3, 5, 10]
    oracle = calibration.oracle_f1(trained, examples, ks)
    assert ner.cfg["nbest"] == 0
    assert oracle[1].fscore == pytest.approx(trained.evaluate(examples)["ents_f"])
    ner.cfg["nbest"] = max(ks)
    errors = []
    for k in ks:
        assert (oracle[k].tp, oracle[k].fp, oracle[k].fn) == reference_oracle(trained, examples, k)
        errors.append(oracle[k].fp + oracle[k].fn)
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]


def test_oracle_of_every_path_is_perfect(trained: Language) -> None:
    tiny = [
        ("Shaka Khan lives", {"entities": [(0, 10, "PERSON")]}),
        ("Khan sees London", {"entities": [(10, 16, "PERSON")]}),
        ("Berlin is", {"entities": [(0, 6, "LOC")]}),
    ]
    oracle = calibration.oracle_f1(trained, examples_for(trained, tiny), [1, 125])
    assert oracle[1].fscore < 1.0
    assert oracle[125].fscore == 1.0


def test_sentence_analyses_oracle_improves_with_k(trained: Language, ner) -> None:
    """With `unit="sentence"` each sentence has analyses of its own: the errors fall with k,
    and the settings are restored after the call."""
    examples = examples_for(trained, HELD_OUT + MULTI)
    ks = [1, 2, 5, 10]
    oracle = calibration.oracle_f1(trained, examples, ks, unit="sentence")
    errors = [oracle[k].fp + oracle[k].fn for k in ks]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    assert ner.cfg["nbest"] == 0 and ner.cfg["nbest_unit"] == "doc"


def test_oracle_rejects_bad_k(trained: Language) -> None:
    for ks in ([], [0, 1]):
        with pytest.raises(ValueError, match="ks"):
            calibration.oracle_f1(trained, examples_for(trained, HELD_OUT), ks)


# The calibrate command.


@pytest.fixture(scope="module")
def saved(underfit: Language, tmp_path_factory) -> dict[str, Path]:
    """The underfit pipeline on disk, held-out gold data, a dev set without entities, and a
    pipeline without a bilstm_crf component."""
    folder = tmp_path_factory.mktemp("calibrate")
    underfit.to_disk(folder / "model")
    gold = [eg.reference for eg in examples_for(underfit, HELD_OUT)]
    DocBin(docs=gold).to_disk(folder / "dev.spacy")
    DocBin(docs=[underfit.make_doc(text) for text, _ in HELD_OUT]).to_disk(folder / "raw.spacy")
    (folder / "dev.txt").write_text("Berlin\n")
    (folder / "bad.spacy").write_text("not a DocBin")
    other = spacy.blank("en")
    other.add_pipe("sentencizer")
    other.to_disk(folder / "no_crf")
    names = ("model", "dev.spacy", "raw.spacy", "dev.txt", "bad.spacy", "no_crf")
    return {"folder": folder} | {name: folder / name for name in names}


def test_calibrate_command_end_to_end(saved: dict[str, Path]) -> None:
    output = saved["folder"] / "calibrated"
    command = [sys.executable, "-m", "spacy_bilstm_crf", "calibrate"]
    run = subprocess.run(
        [*command, str(saved["model"]), str(saved["dev.spacy"]), str(output)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    ece_line = next(line for line in lines if line.startswith("ECE on dev: "))
    before, after = (float(word) for word in ece_line.split()[3:6:2])
    assert after < before
    calibrated = spacy.load(output)
    temperature = calibrated.get_pipe("ner").cfg["temperature"]
    assert f"temperature: 1.000 -> {temperature:.3f}" in lines
    nlp = spacy.load(saved["model"])
    fitted = calibration.fit_temperature(nlp, calibration.read_examples(nlp, saved["dev.spacy"]))
    assert temperature == pytest.approx(fitted, rel=1e-6)
    texts = [text for text, _ in HELD_OUT]
    assert [ents(doc) for doc in calibrated.pipe(texts)] == [ents(doc) for doc in nlp.pipe(texts)]
    # Only the few entities are worth a warning: the temperature is inside the bounds.
    count = len(calibration.entity_outcomes(nlp, examples_for(nlp, HELD_OUT)).probs)
    assert run.stderr == (
        f"warning: only {count} predicted entities to fit on (fewer than 100): the "
        "temperature is a rough estimate\n"
    )


def test_calibrate_command_takes_the_training_entities_of_an_older_pipeline(
    saved: dict[str, Path],
) -> None:
    folder = saved["folder"]
    older = folder / "older"
    shutil.copytree(saved["model"], older)
    cfg = srsly.read_json(older / "ner" / "cfg")
    del cfg["known_entities"], cfg["seen_temperature"], cfg["unseen_temperature"]
    srsly.write_json(older / "ner" / "cfg", cfg)
    assert spacy.load(older).get_pipe("ner").cfg["known_entities"] == []
    nlp = spacy.blank("en")
    train = [eg.reference for eg in examples_for(nlp, TRAIN_DATA[1:2])]  # London and Berlin
    DocBin(docs=train).to_disk(folder / "train.spacy")
    output = folder / "older-calibrated"
    command = [sys.executable, "-m", "spacy_bilstm_crf", "calibrate", str(older)]
    command += [str(saved["dev.spacy"]), str(output), "--train", str(folder / "train.spacy")]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    pipe = spacy.load(output).get_pipe("ner")
    assert pipe.cfg["known_entities"] == sorted([entity_key("London"), entity_key("Berlin")])
    seen, unseen = pipe.cfg["seen_temperature"], pipe.cfg["unseen_temperature"]
    assert f"entity temperatures: {seen:.3f} for training entities" in run.stdout
    assert seen != unseen


@pytest.mark.parametrize(
    "model, dev, extra, message",
    [
        ("missing", "dev.spacy", [], "Cannot load the pipeline"),
        ("no_crf", "dev.spacy", [], r"has no bilstm_crf components\. Its components: \["),
        ("no_crf", "dev.spacy", ["--component", "ner"], r"its bilstm_crf components: none"),
        ("model", "dev.spacy", ["--component", "tagger"], r"bilstm_crf components: \['ner'\]"),
        ("model", "missing.spacy", [], "No such file"),
        ("model", "dev.txt", [], "not a .spacy file"),
        ("model", "bad.spacy", [], "Cannot read"),
        ("model", "raw.spacy", [], "has no gold entities"),
    ],
)
def test_calibrate_command_errors(saved: dict[str, Path], capsys, model, dev, extra, message):
    folder = saved["folder"]
    output = folder / "never"
    code = main(["calibrate", str(folder / model), str(folder / dev), str(output), *extra])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.splitlines()) == 1
    assert re.search(message, error), error
    assert not output.exists()


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("out", lambda out: out.write_text("x"), "The output '{out}' is a file: name a folder"),
        (
            "out",
            lambda out: (out.mkdir(), (out / "notes.txt").write_text("x")),
            "The output folder '{out}' holds other files (notes.txt) and no spaCy pipeline",
        ),
        (
            "file/out",
            lambda out: out.parent.write_text("x"),
            "Cannot write the output '{out}': '{out.parent}' is not a folder",
        ),
    ],
)
def test_calibrate_checks_its_output_before_any_work(
    saved, tmp_path, capsys, monkeypatch, name, make, message
) -> None:
    """Refused before the pipeline is loaded (loading here fails the test)."""
    out = tmp_path / name
    make(out)

    def no_load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded")

    monkeypatch.setattr(spacy, "load", no_load)
    assert main(["calibrate", str(saved["model"]), str(saved["dev.spacy"]), str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: " + message.format(out=out)), error
    assert len(error.splitlines()) == 1


def test_calibrate_command_refuses_a_file_as_output_in_one_line(saved, tmp_path) -> None:
    out = tmp_path / "model.txt"
    out.write_text("keep me")
    command = [sys.executable, "-m", "spacy_bilstm_crf", "calibrate", str(saved["model"])]
    run = subprocess.run([*command, str(saved["dev.spacy"]), str(out)], capture_output=True)
    assert run.returncode == 2
    assert run.stderr.decode().splitlines() == [
        f"error: The output '{out}' is a file: name a folder for the calibrated pipeline."
    ]
    assert out.read_text() == "keep me"


def test_calibrate_warns_when_the_fit_means_little(saved, tmp_path, capsys) -> None:
    """Gold labels the component does not know: every entity is wrong, there are few, and the
    temperature runs to its upper bound; each is one warning line. The output is a pipeline
    folder, which is replaced."""
    nlp = spacy.load(saved["model"])
    renamed = {"PERSON": "A", "LOC": "B"}
    data = [
        (
            text,
            {"entities": [(start, end, renamed[label]) for start, end, label in ann["entities"]]},
        )
        for text, ann in HELD_OUT
    ]
    DocBin(docs=[eg.reference for eg in examples_for(nlp, data)]).to_disk(tmp_path / "ab.spacy")
    out = tmp_path / "replaced"
    shutil.copytree(saved["no_crf"], out)
    dev = str(tmp_path / "ab.spacy")
    assert main(["calibrate", str(saved["model"]), dev, str(out)]) == 0
    count = len(calibration.entity_outcomes(nlp, examples_for(nlp, HELD_OUT)).probs)
    labels = ", ".join(nlp.get_pipe("ner").labels)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: the entity labels of {dev} (A, B) share none with the component's "
        f"({labels}): every entity counts as wrong, so the fit is meaningless",
        f"warning: only {count} predicted entities to fit on (fewer than 100): the "
        "temperature is a rough estimate",
        "warning: the temperature, 8.000, is at a bound of its search (0.25 to 8): the best "
        "one may lie beyond it",
    ]
    assert spacy.load(out).get_pipe("ner").cfg["temperature"] == 8.0


def test_bound_warnings_name_each_temperature_at_a_bound(trained: Language, ner) -> None:
    ner.cfg.update(temperature=1.0, seen_temperature=0.25 * 1.009, unseen_temperature=8.0)
    assert calibration.bound_warnings(ner) == [
        "the temperature for training entities, 0.252, is at a bound of its search (0.25 to "
        "8): the best one may lie beyond it",
        "the temperature for new entities, 8.000, is at a bound of its search (0.25 to 8): "
        "the best one may lie beyond it",
    ]
    ner.cfg.update(seen_temperature=0.25 * 1.011, unseen_temperature=7.9)
    assert calibration.bound_warnings(ner) == []
    assert len(calibration.bound_warnings(ner, bounds=(1.0, 2.0))) == 1
