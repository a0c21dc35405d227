"""The outcomes of a `bilstm_crf` component's entities on gold data, and the fix for
probabilities that claim too much or too little.

Functions that run a pipeline on gold `Example`s: the outcomes of its predicted entities,
the temperatures that make them honest (`fit_temperature`: one for all entities, and one
each for entities seen among the training entities and new ones), precision and recall when only
entities of a given probability are kept, and the F1 an oracle gets from the n best analyses.

An entity is correct exactly when spaCy's NER scorer (`spacy.scorer.get_ner_prf`) would count
it as a true positive: its tokens, aligned to the gold tokens, give the gold entity's
boundaries and label. Entities over gold tokens without entity annotation are neither right nor
wrong there, so they are left out here too. The accuracy of the entities at threshold 0 is thus
the precision that `nlp.evaluate` reports.
"""

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy
from spacy.attrs import SENT_START
from spacy.language import Language
from spacy.scorer import PRFScore, get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Corpus, Example

from ..pipeline.bilstm_crf import BiLSTMCRFTagger
from ..pipeline.known_entities import are_known
from .metrics import Outcomes, log_loss

# The component computes entity probabilities in float32 as exp(log Z' - log Z) of two large
# log partitions, so on long docs and at low temperatures they can exceed 1 by rounding
# (1 + 2**-10 seen at T = 0.25): values up to this far above 1 are read as 1.
ROUNDING_SLACK = 1e-2
# The temperatures `fit_temperature` searches by default, and how close to a bound a fitted
# one is taken to be at it: the search's own precision, 1%.
TEMPERATURE_BOUNDS = (0.25, 8.0)
AT_BOUND = math.log(1.01)
# Fewer predicted entities than this make a fitted temperature a rough estimate.
FEW_ENTITIES = 100


class CalibrationError(ValueError):
    """A pipeline, component or data set that calibration cannot work with."""


class ThresholdScores(NamedTuple):
    """Corpus scores of the entities whose probability reaches `threshold`, and their count."""

    threshold: float
    precision: float
    recall: float
    f1: float
    entities: int


def bilstm_crf_component(nlp: Language, component: str | None = None) -> BiLSTMCRFTagger:
    """The enabled `bilstm_crf` component named `component`, or, when it is None, the
    pipeline's only one whatever its name; an error names the ones there are."""
    ours = [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == "bilstm_crf"]
    if component is None:
        if len(ours) != 1:
            raise CalibrationError(
                f"The pipeline has {len(ours) or 'no'} bilstm_crf components"
                + (f" ({ours}): choose one with --component." if ours else ".")
                + (f" Its components: {nlp.pipe_names}." if not ours else "")
            )
        component = ours[0]
    if component not in nlp.component_names:
        raise CalibrationError(
            f"The pipeline has no component {component!r}; its bilstm_crf components: "
            f"{ours or 'none'} (choose one with --component)."
        )
    if component not in nlp.pipe_names:
        raise CalibrationError(f"The component {component!r} is disabled: enable it first.")
    pipe = nlp.get_pipe(component)
    if not isinstance(pipe, BiLSTMCRFTagger):
        raise CalibrationError(
            f"The component {component!r} is a {type(pipe).__name__}, not a bilstm_crf "
            f"component; the pipeline's bilstm_crf components: {ours or 'none'}."
        )
    return pipe


def read_examples(nlp: Language, path: str | Path) -> list[Example]:
    """The gold examples of a `.spacy` file, tokenized by `nlp`; an error if the file is
    missing or unreadable or has no gold entities."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"No such file: {str(path)!r} (a .spacy file from spacy convert).")
    if path.suffix != ".spacy":
        raise CalibrationError(
            f"{str(path)!r} is not a .spacy file (convert it with spacy convert)."
        )
    try:
        examples = list(Corpus(path)(nlp))
    except Exception as error:
        raise CalibrationError(f"Cannot read {str(path)!r} as a .spacy file: {error}") from None
    if not any(eg.reference.ents for eg in examples):
        raise CalibrationError(
            f"{str(path)!r} has no gold entities ({len(examples)} docs): calibration needs "
            "annotated data."
        )
    return examples


def entity_outcomes(
    nlp: Language, examples: Iterable[Example], component: str | None = None
) -> Outcomes:
    """Probability, correctness and label of every entity in the component's confidence
    group, running `nlp` on the examples' texts with `confidence` on for the call. The group
    includes entities that an earlier component's entities kept out of `doc.ents`: the
    component keeps and drops (`presets` "keep") for the call, so that temperatures are
    fitted on the tagger's own probabilities, not on ones conditional on presets."""
    examples = list(examples)
    return _outcomes(nlp, examples, _tokenize(nlp, examples), component)


def fit_temperature(
    nlp: Language,
    examples: Iterable[Example],
    component: str | None = None,
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    by_seen: bool = True,
) -> float:
    """The temperature in `bounds` that minimises the log loss of the entities' correctness
    given their probabilities on `examples` (held-out data), within 1%.

    Each candidate is set as the component's `cfg["temperature"]` and the pipeline re-run:
    a grid with a factor 2 between points, then a golden-section search on log T around its
    best point. The best temperature is left set on the component and returned. Entities do
    not depend on the temperature, only their probabilities do. A bound comes back when the
    optimum lies beyond it (e.g. every entity correct: sharper is always better).

    With `by_seen`, when the examples have entities of both groups, the same search also
    fits `cfg["seen_temperature"]` on the entities whose text is among the component's
    training entities and `cfg["unseen_temperature"]` on the others, which the component
    then uses for its entity probabilities: held-out sets differ in their share of new
    names, which are right less often. Otherwise both are set to None.
    """
    pipe = bilstm_crf_component(nlp, component)
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must be 0 < low < high, got {bounds}.")
    examples = list(examples)
    docs = _tokenize(nlp, examples)
    runs: dict[float, Outcomes] = {}

    def outcomes_at(log_t: float) -> Outcomes:
        if log_t not in runs:
            settings = {"seen_temperature": None, "unseen_temperature": None}
            with _settings(pipe, temperature=math.exp(log_t), **settings):
                runs[log_t] = _outcomes(nlp, examples, docs, component)
            if not len(runs[log_t].probs):
                raise CalibrationError(
                    f"The component {pipe.name!r} predicts no entities on these examples: "
                    "there is nothing to fit the temperature to."
                )
        return runs[log_t]

    def best(chosen: Callable[[Outcomes], numpy.ndarray]) -> float:
        def loss(log_t: float) -> float:
            outcomes = outcomes_at(log_t)
            keep = chosen(outcomes)
            return log_loss(outcomes.probs[keep], outcomes.correct[keep])

        return math.exp(_golden_section(loss, math.log(low), math.log(high)))

    temperature = best(lambda outcomes: numpy.ones(len(outcomes.probs), dtype=bool))
    seen = unseen = None
    known = next(iter(runs.values())).known  # the same in every run
    if by_seen and known.any() and not known.all():
        seen = best(lambda outcomes: outcomes.known)
        unseen = best(lambda outcomes: ~outcomes.known)
    pipe.cfg.update(temperature=temperature, seen_temperature=seen, unseen_temperature=unseen)
    return temperature


def _golden_section(loss: Callable[[float], float], low: float, high: float) -> float:
    """The point in [low, high] of least `loss`, within log(1.01): a grid with a factor 2
    between points, then a golden-section search around its best point; of equal losses, the
    one nearest 0 (temperature 1)."""
    values: dict[float, float] = {}

    def cached(x: float) -> float:
        if x not in values:
            values[x] = loss(x)
        return values[x]

    grid = numpy.linspace(low, high, max(3, math.ceil((high - low) / math.log(2)) + 1))
    best = min(range(len(grid)), key=lambda i: cached(float(grid[i])))
    a, b = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, len(grid) - 1)])
    shrink = (math.sqrt(5) - 1) / 2
    while b - a > math.log(1.01):
        c, d = b - shrink * (b - a), a + shrink * (b - a)
        if cached(c) <= cached(d):
            b = d
        else:
            a = c
    return min(values, key=lambda x: (values[x], abs(x)))


def precision_recall_at(
    nlp: Language,
    examples: Iterable[Example],
    thresholds: Sequence[float],
    component: str | None = None,
) -> list[ThresholdScores]:
    """For each threshold, spaCy's corpus precision, recall and F1 of the component's entities
    whose probability reaches it: what the component's `threshold` setting gives when it is
    the pipeline's only entity source. One run of `nlp`, with `confidence` on for it."""
    examples = list(examples)
    pipe = bilstm_crf_component(nlp, component)
    with _settings(pipe, confidence=True, nbest=0):
        predicted = _predict(nlp, examples, _tokenize(nlp, examples))
    key = pipe.cfg["spans_key"]
    groups = [
        (list(eg.predicted.spans[key]), eg.predicted.spans[key].attrs["scores"]) for eg in predicted
    ]
    results = []
    for threshold in thresholds:
        # The docs are this call's own: their entities are rewritten for each threshold, and
        # each example keeps its alignment.
        for eg, (spans, probs) in zip(predicted, groups):
            kept = [span for span, prob in zip(spans, probs) if prob >= threshold]
            eg.predicted.set_ents(kept, default="outside")
        scores = get_ner_prf(predicted)
        values = [scores[f"ents_{name}"] for name in "prf"]
        count = sum(len(eg.predicted.ents) for eg in predicted)
        results.append(
            ThresholdScores(
                float(threshold), *(math.nan if v is None else v for v in values), count
            )
        )
    return results


def oracle_f1(
    nlp: Language,
    examples: Iterable[Example],
    ks: Sequence[int],
    component: str | None = None,
    unit: str = "doc",
) -> dict[int, PRFScore]:
    """For each k, corpus counts and F1 when each SENTENCE takes the best of the component's
    first k analyses (with `nbest = max(ks)` and `nbest_unit = unit` for the call): of its
    doc (`unit` "doc"), or of the sentence itself (`unit` "sentence", the component's
    analyses per sentence, the docs given the gold sentence boundaries).

    The unit is the gold sentence (the whole doc when the gold has no sentences), as NCRF++
    reports its oracle: per doc, the k best analyses mostly differ in one place each, so a
    choice per doc would show little of what they hold. Best means fewest errors (false
    positives plus false negatives) among the entities that start in the sentence, the earlier
    rank on a tie. An entity is counted as spaCy's scorer counts it; only the component's own
    analyses are scored, so k=1 is the pipeline's `ents_f` when the component is its only
    entity source and keeps every entity (threshold 0).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be whole numbers >= 1, got {ks}.")
    examples = list(examples)
    pipe = bilstm_crf_component(nlp, component)
    docs = _tokenize(nlp, examples)
    if unit == "sentence":
        docs = [_with_gold_sentences(doc, eg) for doc, eg in zip(docs, examples)]
    with _settings(pipe, nbest=max(ks), nbest_unit=unit):
        predicted = _predict(nlp, examples, docs)
    key = pipe.cfg["spans_key"]
    scores = {k: PRFScore() for k in ks}
    for eg in predicted:
        if not eg.reference.has_annotation("ENT_IOB"):
            continue
        sentences = _sentence_ids(eg.reference)
        units = int(sentences.max()) + 1 if len(sentences) else 1
        starts = numpy.asarray([ent.start for ent in eg.reference.ents], dtype="int64")
        gold = numpy.bincount(sentences[starts], minlength=units)  # shape: (units,)
        counts = []  # per rank: (tp, fp) per unit, shape (2, units)
        for rank in range(1, max(ks) + 1):
            group = eg.predicted.spans.get(f"{key}_nbest_{rank}")
            if group is None:
                break
            counted, correct, unit = _judge(eg, list(group))
            tp = numpy.bincount(unit[counted & correct], minlength=units)
            fp = numpy.bincount(unit[counted & ~correct], minlength=units)
            counts.append(numpy.stack([tp, fp]))
        table = numpy.stack(counts)  # shape: (ranks, 2, units)
        errors = table[:, 1] + gold - table[:, 0]  # shape: (ranks, units)
        for k in ks:
            best = errors[:k].argmin(0)  # shape: (units,), the first minimum
            chosen = table[best, :, numpy.arange(units)]  # shape: (units, 2)
            tp, fp = chosen.sum(0)
            scores[k] += PRFScore(tp=int(tp), fp=int(fp), fn=int(gold.sum() - tp))
    return scores


def _outcomes(
    nlp: Language, examples: list[Example], docs: list[Doc], component: str | None
) -> Outcomes:
    """`entity_outcomes` on docs already tokenized from the examples' texts."""
    pipe = bilstm_crf_component(nlp, component)
    with _settings(pipe, confidence=True, nbest=0, presets="keep"):
        predicted = _predict(nlp, examples, docs)
    key = pipe.cfg["spans_key"]
    probs, correct, labels, texts = [], [], [], []
    for eg in predicted:
        group = eg.predicted.spans[key]
        counted, right, _ = _judge(eg, list(group))
        scores = numpy.asarray(group.attrs["scores"], dtype="float64")
        scores[(scores > 1.0) & (scores <= 1.0 + ROUNDING_SLACK)] = 1.0
        probs.append(scores[counted])
        correct.append(right[counted])
        labels.extend(span.label_ for span, ok in zip(group, counted) if ok)
        texts.extend(span.text for span, ok in zip(group, counted) if ok)
    return Outcomes(
        numpy.concatenate([numpy.zeros(0), *probs]),
        numpy.concatenate([numpy.zeros(0, dtype=bool), *correct]),
        numpy.asarray(labels, dtype=str),
        are_known(texts, pipe.cfg["known_entities"]),
    )


def _judge(example: Example, spans: list[Span]) -> tuple[numpy.ndarray, ...]:
    """Per span of `example.predicted`, as `get_ner_prf` judges it: whether it is counted (it
    aligns to gold tokens that all have entity annotation), whether it is a true positive (a
    gold entity matches it, each gold entity once), and the gold sentence it starts in."""
    counted = numpy.zeros(len(spans), dtype=bool)
    correct = numpy.zeros(len(spans), dtype=bool)
    units = numpy.zeros(len(spans), dtype="int64")
    reference = example.reference
    if not reference.has_annotation("ENT_IOB"):
        return counted, correct, units
    golds = {(ent.label_, ent.start, ent.end) for ent in reference.ents}
    sentences = _sentence_ids(reference)
    x2y = example.alignment.x2y
    for i, span in enumerate(spans):
        indices = x2y[span.start : span.end]
        if not len(indices):
            continue
        start, end = int(indices[0]), int(indices[-1]) + 1
        if all(token.ent_iob != 0 for token in reference[start:end]):
            counted[i], units[i] = True, sentences[start]
            key = (span.label_, start, end)
            if key in golds:
                correct[i] = True
                golds.remove(key)
    return counted, correct, units


def _sentence_ids(doc: Doc) -> numpy.ndarray:
    """The sentence of each token of `doc`, 0 for all when it has no sentence starts."""
    if not doc.has_annotation("SENT_START"):
        return numpy.zeros(len(doc), dtype="int64")
    starts = doc.to_array(SENT_START) == 1
    return numpy.maximum(numpy.cumsum(starts) - 1, 0)


def _tokenize(nlp: Language, examples: list[Example]) -> list[Doc]:
    """The examples' texts as `nlp` tokenizes them, to run the pipeline on copies."""
    return [nlp.make_doc(eg.reference.text) for eg in examples]


def _with_gold_sentences(doc: Doc, example: Example) -> Doc:
    """`doc` with the sentence starts of the example's reference, through the alignment: a
    token starts a sentence when it is the first one aligned to a gold sentence start."""
    if not example.reference.has_annotation("SENT_START"):
        return doc
    starts = [False] * len(doc)
    aligned = Example(doc, example.reference).alignment.y2x
    for sentence in example.reference.sents:
        tokens = aligned[sentence.start]
        if len(tokens):
            starts[int(tokens[0])] = True
    if starts:
        starts[0] = True
    words = [token.text for token in doc]
    spaces = [bool(token.whitespace_) for token in doc]
    return Doc(doc.vocab, words=words, spaces=spaces, sent_starts=starts)


def _predict(nlp: Language, examples: list[Example], docs: list[Doc]) -> list[Example]:
    """Run `nlp` on copies of `docs`, paired with the examples' gold docs."""
    outputs = nlp.pipe(doc.copy() for doc in docs)
    return [Example(doc, eg.reference) for doc, eg in zip(outputs, examples)]


@contextmanager
def _settings(pipe: BiLSTMCRFTagger, **values: Any) -> Iterator[None]:
    """Set cfg entries of `pipe` inside the block and restore them after."""
    saved = {key: pipe.cfg[key] for key in values}
    pipe.cfg.update(values)
    try:
        yield
    finally:
        pipe.cfg.update(saved)
