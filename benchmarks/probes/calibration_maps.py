"""Probe: how far a calibration map fitted on dev can bring test ECE down, against the best
temperature chosen on test itself (an oracle no user has).

    python benchmarks/probes/calibration_maps.py MODEL DEV.spacy TEST.spacy

On a grid of temperatures it prints test ECE for the temperature with the lowest dev log loss,
the one with the lowest dev ECE, and the one with the lowest test ECE; then Platt scaling
(`sigmoid(a * logit(p) + b)`, fitted on dev by log loss over a grid) on top of the dev
temperature. One process, 1 torch thread.
"""

import sys
from collections.abc import Sequence

import numpy
import spacy
import torch

from spacy_bilstm_crf import calibration

GRID = numpy.exp(numpy.linspace(numpy.log(0.8), numpy.log(4.0), 29))


def outcomes(nlp, pipe, examples: list, temperature: float) -> tuple[numpy.ndarray, ...]:
    """Probability and correctness of each predicted entity at `temperature`."""
    every = {"seen_temperature": None, "unseen_temperature": None}  # one T for all entities
    with calibration.temperature._settings(pipe, temperature=temperature, **every):
        found = calibration.entity_outcomes(nlp, examples)
    return found.probs, found.correct


def platt(probs: numpy.ndarray, a: float, b: float) -> numpy.ndarray:
    clipped = numpy.clip(probs, 1e-7, 1 - 1e-7)
    return 1 / (1 + numpy.exp(-(a * (numpy.log(clipped) - numpy.log1p(-clipped)) + b)))


def main(argv: Sequence[str]) -> None:
    model, dev, test = argv
    torch.set_num_threads(1)
    nlp = spacy.load(model)
    pipe = calibration.bilstm_crf_component(nlp, "ner")
    sets = {
        "dev": calibration.read_examples(nlp, dev),
        "test": calibration.read_examples(nlp, test),
    }
    runs = {
        name: {t: outcomes(nlp, pipe, examples, float(t)) for t in GRID}
        for name, examples in sets.items()
    }
    ece = calibration.expected_calibration_error
    choices = {
        "lowest dev log loss": min(GRID, key=lambda t: calibration.log_loss(*runs["dev"][t])),
        "lowest dev ECE": min(GRID, key=lambda t: ece(*runs["dev"][t])),
        "lowest test ECE (oracle)": min(GRID, key=lambda t: ece(*runs["test"][t])),
    }
    for name, t in choices.items():
        print(
            f"T {t:.3f} ({name}): dev ECE {ece(*runs['dev'][t]):.4f}, "
            f"test {ece(*runs['test'][t]):.4f}"
        )
    t = choices["lowest dev log loss"]
    (dev_p, dev_c), (test_p, test_c) = runs["dev"][t], runs["test"][t]
    grid = [(a, b) for a in numpy.linspace(0.2, 1.5, 53) for b in numpy.linspace(-3, 3, 61)]
    a, b = min(grid, key=lambda ab: calibration.log_loss(platt(dev_p, *ab), dev_c))
    dev_q, test_q = platt(dev_p, a, b), platt(test_p, a, b)
    print(
        f"Platt a {a:.3f}, b {b:.3f} after T {t:.3f}: dev ECE {ece(dev_q, dev_c):.4f}, "
        f"test {ece(test_q, test_c):.4f}; test accuracy {test_c.mean():.4f}, "
        f"mean probability {test_q.mean():.4f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
