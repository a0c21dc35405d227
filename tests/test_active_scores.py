"""The annotation loop's scores against a direct computation: every tag path of short docs
enumerated under a tiny trained model's CRF, at its calibrated temperature."""

import itertools

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc
from spacy.training import Example

from spacy_bilstm_crf.active.uncertainty import (
    SPAN_OUTSIDE,
    SPAN_SEED,
    Unit,
    choose,
    piece_units,
    same_text,
    span_units,
)
from spacy_bilstm_crf.ml.bilstm_crf import torch_module

TRAIN_DATA = [
    ("Who is Shaka Khan ?", {"entities": [(7, 17, "PER")]}),
    ("Shaka Khan lives in Berlin .", {"entities": [(0, 10, "PER")]}),
    ("Nothing to see here .", {"entities": []}),
]
TEXTS = ["Shaka lives here .", "Who is Khan", "Berlin is big", "I see Shaka Khan", "Nothing ."]
TEMPERATURE = 1.3


@pytest.fixture(scope="module")
def tagger() -> spacy.Language:
    """One label, BIO (tags O, B-PER, I-PER): few enough paths to enumerate."""
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    config = {
        "scheme": "BIO",
        "model": {
            "hidden_width": 16,
            "tok2vec": {"widths": [8, 4, 4, 4], "rows": [100, 50, 50, 50], "char_width": 4},
        },
    }
    nlp.add_pipe("bilstm_crf", config=config)
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(8):  # a little: the posteriors stay uncertain
        nlp.update(examples, sgd=optimizer)
    nlp.get_pipe("bilstm_crf").cfg["temperature"] = TEMPERATURE
    return nlp


def path_log_probs(nlp: spacy.Language, doc: Doc) -> dict[tuple[int, ...], float]:
    """log P(path) of every allowed tag path of the doc, by enumeration."""
    pipe = nlp.get_pipe("bilstm_crf")
    (emissions,) = pipe.model.predict([doc])
    crf = torch_module(pipe.model).crf
    trans = crf.transitions.detach().double().numpy()
    start = crf.start_transitions.detach().double().numpy()
    end = crf.end_transitions.detach().double().numpy()
    allowed = crf.allowed.numpy()
    allowed_start, allowed_end = crf.allowed_start.numpy(), crf.allowed_end.numpy()
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=len(doc)):
        moves = zip(path, path[1:])
        if not allowed_start[path[0]] or not allowed_end[path[-1]]:
            continue
        if not all(allowed[a, b] for a, b in zip(path, path[1:])):
            continue
        score = start[path[0]] + end[path[-1]] + sum(trans[a, b] for a, b in moves)
        score += sum(float(emissions[t, tag]) for t, tag in enumerate(path))
        scores[path] = score / TEMPERATURE
    log_z = numpy.logaddexp.reduce(list(scores.values()))
    return {path: score - log_z for path, score in scores.items()}


def brute_marginals(log_probs: dict, length: int, tags: int) -> numpy.ndarray:
    marginals = numpy.zeros((length, tags))
    for path, log_prob in log_probs.items():
        for t, tag in enumerate(path):
            marginals[t, tag] += numpy.exp(log_prob)
    return marginals


def test_posteriors_and_best_analyses_equal_enumeration(tagger: spacy.Language) -> None:
    docs = [tagger.make_doc(text) for text in TEXTS]
    _, analyses = tagger.get_pipe("bilstm_crf").analyze(docs)
    for doc, analysis in zip(docs, analyses):
        log_probs = path_log_probs(tagger, doc)
        expected = brute_marginals(log_probs, len(doc), 3)
        assert analysis.marginals == pytest.approx(expected, abs=1e-5)
        ((ids, log_prob),) = analysis.pieces[0].analyses
        assert log_prob == pytest.approx(max(log_probs.values()), abs=1e-5)
        assert tuple(ids) == max(log_probs, key=log_probs.get)


def test_sentence_analyses_are_marginal_over_the_rest_of_the_doc(tagger: spacy.Language) -> None:
    words = ["Shaka", "lives", ".", "Who", "is", "Khan"]
    doc = Doc(tagger.vocab, words=words, sent_starts=[1, 0, 0, 1, 0, 0])
    _, (analysis,) = tagger.get_pipe("bilstm_crf").analyze([doc], unit="sentence")
    log_probs = path_log_probs(tagger, doc)
    assert [(p.start, p.end) for p in analysis.pieces] == [(0, 3), (3, 6)]
    for piece in analysis.pieces:
        sums: dict[tuple[int, ...], float] = {}
        for path, log_prob in log_probs.items():
            part = path[piece.start : piece.end]
            sums[part] = numpy.logaddexp(sums.get(part, -numpy.inf), log_prob)
        ((ids, log_prob),) = piece.analyses
        assert log_prob == pytest.approx(max(sums.values()), abs=1e-5)
        assert tuple(ids) == max(sums, key=sums.get)


@pytest.mark.parametrize("strategy", ["lc", "mnlp", "entropy"])
def test_each_strategy_ranks_docs_as_the_direct_computation(
    tagger: spacy.Language, strategy: str
) -> None:
    docs = [tagger.make_doc(text) for text in TEXTS]
    _, analyses = tagger.get_pipe("bilstm_crf").analyze(docs)
    rng = numpy.random.default_rng(0)
    units, expected = [], []
    for doc, analysis in zip(docs, analyses):
        pieces = [(p.start, p.end, p.analyses[0][1]) for p in analysis.pieces]
        units += piece_units(pieces, analysis.marginals, strategy, rng)
        log_probs = path_log_probs(tagger, doc)
        best = max(log_probs.values())
        marginals = brute_marginals(log_probs, len(doc), 3)
        entropy = -(marginals * numpy.log(numpy.clip(marginals, 1e-12, 1))).sum(1).mean()
        expected.append(
            {"lc": 1 - numpy.exp(best), "mnlp": -best / len(doc), "entropy": entropy}[strategy]
        )
    assert [unit.score for unit in units] == pytest.approx(expected, abs=1e-5)
    assert choose(units, n=len(units)) == list(numpy.argsort(-numpy.asarray(expected)))
    confidence = [unit.confidence for unit in units]  # the same order, reversed
    assert list(numpy.argsort(confidence)) == list(numpy.argsort(-numpy.asarray(expected)))


def test_span_regions_follow_the_rule_on_enumerated_posteriors(tagger: spacy.Language) -> None:
    rng = numpy.random.default_rng(0)
    found = 0
    for text in TEXTS:
        doc = tagger.make_doc(text)
        _, (analysis,) = tagger.get_pipe("bilstm_crf").analyze([doc])
        marginals = brute_marginals(path_log_probs(tagger, doc), len(doc), 3)
        uncertain = 1 - marginals.max(1)
        seed = uncertain >= SPAN_SEED
        inside = (marginals[:, 0] < SPAN_OUTSIDE) | seed
        expected = []
        for is_inside, run in itertools.groupby(range(len(doc)), key=lambda i: inside[i]):
            run = list(run)
            if is_inside and seed[run].any():
                expected.append((run[0], run[-1] + 1, uncertain[run].mean()))
        units = span_units(analysis.marginals, [(0, len(doc))], "lc", rng)
        assert [(u.start, u.end) for u in units] == [(s, e) for s, e, _ in expected]
        assert [u.score for u in units] == pytest.approx([m for _, _, m in expected], abs=1e-5)
        reviewed = numpy.zeros(len(doc), dtype=bool)
        reviewed[: len(doc) // 2] = True
        for unit in span_units(analysis.marginals, [(0, len(doc))], "lc", rng, reviewed):
            assert not reviewed[unit.start : unit.end].any()
        found += len(units)
    assert found  # the tiny model is unsure somewhere


def test_a_token_budget_takes_the_best_units_that_fit() -> None:
    units = [Unit(0, 5, 0.9, 0.1), Unit(0, 2, 0.8, 0.2), Unit(0, 4, 0.7, 0.3), Unit(0, 1, 0.1, 0)]
    assert choose(units, tokens=7) == [0, 1]
    assert choose(units, tokens=6) == [0, 3]
    assert choose(units, n=2) == [0, 1]
    with pytest.raises(ValueError, match="exactly one budget"):
        choose(units)


def test_a_repeated_text_is_chosen_once() -> None:
    units = [Unit(0, 5, 0.9, 0.1), Unit(0, 2, 0.8, 0.2), Unit(0, 2, 0.7, 0.3), Unit(0, 1, 0.6, 0)]
    keys = ["x", "x", "y", "x"]
    assert choose(units, n=2, keys=keys) == [0, 2]
    assert choose(units, n=2) == [0, 1]
    # The first "x" does not fit: the next one takes its place, and no later one.
    assert choose(units, tokens=4, keys=keys) == [1, 2]
    assert same_text("PARIS  1996-08-30") == same_text("Paris 1996-08-31") == "paris 0000-00-00"
    assert same_text("Paris 1996") != same_text("Paris , 1996")
