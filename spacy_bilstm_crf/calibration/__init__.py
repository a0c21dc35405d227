"""Calibration of entity probabilities: `metrics.py` (reliability, ECE, Brier score, log loss
on arrays), `temperature.py` (a pipeline's entity outcomes on gold data, the temperatures
that fit them, precision and recall by threshold, n-best oracle F1) and `checks.py` (when a
fit may mean little)."""

from .checks import bound_warnings, data_warnings
from .metrics import (
    Outcomes,
    Reliability,
    brier_score,
    expected_calibration_error,
    log_loss,
    per_label,
    reliability,
)
from .temperature import (
    CalibrationError,
    ThresholdScores,
    bilstm_crf_component,
    entity_outcomes,
    fit_temperature,
    oracle_f1,
    precision_recall_at,
    read_examples,
)

__all__ = [
    "CalibrationError",
    "Outcomes",
    "Reliability",
    "ThresholdScores",
    "bilstm_crf_component",
    "bound_warnings",
    "brier_score",
    "data_warnings",
    "entity_outcomes",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
    "oracle_f1",
    "per_label",
    "precision_recall_at",
    "read_examples",
    "reliability",
]
