"""How far probabilities are from what they claim: reliability bins, expected calibration
error, Brier score and log loss, on arrays of entity probabilities and outcomes (right or
wrong). `temperature.py` computes the outcomes of a pipeline's entities and fits the fix.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy

# Probabilities are clipped this far from 0 and 1 in the log loss (float32 CRF scores round
# a probability near 1 to exactly 1).
LOG_LOSS_EPS = 1e-7


class Outcomes(NamedTuple):
    """Predicted entities, each shape `(E,)`: probability, whether correct, label, and
    whether its text is among the component's training entities."""

    probs: numpy.ndarray
    correct: numpy.ndarray
    labels: numpy.ndarray
    known: numpy.ndarray


class Reliability(NamedTuple):
    """Equal-width bins over [0, 1]: `edges` `(bins + 1,)`; per bin `(bins,)` the entity
    count, mean probability and accuracy (NaN in empty bins)."""

    edges: numpy.ndarray
    counts: numpy.ndarray
    confidence: numpy.ndarray
    accuracy: numpy.ndarray


def reliability(probs: Sequence[float], correct: Sequence[bool], bins: int = 15) -> Reliability:
    """Bin `probs` into `bins` equal-width bins: bin `i` holds `edges[i] <= p < edges[i + 1]`,
    and the last bin also holds 1.0."""
    probs, correct = check_outcomes(probs, correct)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}.")
    edges = numpy.linspace(0.0, 1.0, bins + 1)
    index = numpy.searchsorted(edges[1:-1], probs, side="right")  # shape: (E,)
    counts = numpy.bincount(index, minlength=bins)
    with numpy.errstate(invalid="ignore", divide="ignore"):
        confidence = numpy.bincount(index, probs, bins) / counts
        accuracy = numpy.bincount(index, correct.astype(float), bins) / counts
    return Reliability(edges, counts, confidence, accuracy)


def expected_calibration_error(
    probs: Sequence[float], correct: Sequence[bool], bins: int = 15
) -> float:
    """Sum over the `reliability` bins of `count / total * |accuracy - confidence|` (Guo et
    al., 2017); 1.0 falls in the last bin."""
    table = reliability(probs, correct, bins)
    filled = table.counts > 0
    weights = table.counts[filled] / table.counts.sum()
    return float(numpy.sum(weights * numpy.abs(table.accuracy - table.confidence)[filled]))


def brier_score(probs: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean squared difference between each probability and its outcome (1 or 0)."""
    probs, correct = check_outcomes(probs, correct)
    return float(numpy.mean((probs - correct) ** 2))


def log_loss(probs: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean negative log-likelihood of the outcomes, probabilities clipped by `LOG_LOSS_EPS`."""
    probs, correct = check_outcomes(probs, correct)
    probs = numpy.clip(probs, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return float(-numpy.mean(numpy.where(correct, numpy.log(probs), numpy.log1p(-probs))))


def per_label(
    outcomes: Outcomes, metric: Callable[[numpy.ndarray, numpy.ndarray], float]
) -> dict[str, float]:
    """`metric(probs, correct)` over the entities of each label, labels sorted."""
    scores = {}
    for label in sorted(set(outcomes.labels.tolist())):
        chosen = outcomes.labels == label
        scores[label] = metric(outcomes.probs[chosen], outcomes.correct[chosen])
    return scores


def check_outcomes(
    probs: Sequence[float], correct: Sequence[bool]
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Probabilities as float64 and outcomes as bool, both `(E,)`, or a clear error."""
    probs = numpy.asarray(probs, dtype="float64")
    correct_array = numpy.asarray(correct)
    if probs.ndim != 1 or correct_array.shape != probs.shape:
        raise ValueError(
            f"probs and correct must be 1-D and of one length, got shapes {probs.shape} "
            f"and {correct_array.shape}."
        )
    if not len(probs):
        raise ValueError("No predictions to score: probs and correct are empty.")
    if not numpy.all((probs >= 0) & (probs <= 1)):
        raise ValueError("probs must lie in [0, 1] (NaN is not a probability).")
    if correct_array.dtype != bool and not numpy.isin(correct_array, (0, 1)).all():
        raise ValueError("correct must hold booleans (or 0 and 1).")
    return probs, correct_array.astype(bool)
