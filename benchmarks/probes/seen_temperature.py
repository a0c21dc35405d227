"""Probe: one calibration temperature for entities seen among the training entities and one
for the others, fitted on dev by log loss over a grid; test ECE against one temperature.

    python benchmarks/probes/seen_temperature.py MODEL TRAIN.spacy DEV.spacy TEST.spacy
"""

import sys
from collections.abc import Sequence

import numpy
import spacy
import torch
from spacy.tokens import DocBin

from spacy_bilstm_crf import calibration

GRID = numpy.exp(numpy.linspace(numpy.log(0.8), numpy.log(4.0), 15))


def outcomes(nlp, pipe, path: str, temperature: float, seen: set[str]) -> tuple:
    """Probability, correctness and seen-ness of each predicted entity at `temperature`."""
    examples = calibration.read_examples(nlp, path)
    docs = calibration._tokenize(nlp, examples)
    every = {"seen_temperature": None, "unseen_temperature": None}  # one T for all entities
    with calibration._settings(pipe, confidence=True, nbest=0, temperature=temperature, **every):
        predicted = calibration._predict(nlp, examples, docs)
    probs, correct, known = [], [], []
    for eg in predicted:
        group = eg.predicted.spans[pipe.cfg["spans_key"]]
        counted, right, _ = calibration._judge(eg, list(group))
        scores = numpy.minimum(numpy.asarray(group.attrs["scores"], dtype="float64"), 1.0)
        probs.append(scores[counted])
        correct.append(right[counted])
        known.append(numpy.array([span.text.lower() in seen for span in group], bool)[counted])
    return tuple(map(numpy.concatenate, (probs, correct, known)))


def main(argv: Sequence[str]) -> None:
    model, train, dev, test = argv
    torch.set_num_threads(1)
    nlp = spacy.load(model)
    pipe = calibration.bilstm_crf_component(nlp, "ner")
    docs = DocBin().from_disk(train).get_docs(nlp.vocab)
    seen = {ent.text.lower() for doc in docs for ent in doc.ents}
    runs = {
        name: {t: outcomes(nlp, pipe, path, float(t), seen) for t in GRID}
        for name, path in (("dev", dev), ("test", test))
    }

    def fitted(group: bool | None) -> float:
        def loss(t: float) -> float:
            probs, correct, known = runs["dev"][t]
            keep = numpy.ones_like(known) if group is None else known == group
            return calibration.log_loss(probs[keep], correct[keep])

        return min(GRID, key=loss)

    t_all, t_seen, t_unseen = fitted(None), fitted(True), fitted(False)
    print(f"T all {t_all:.3f}, seen {t_seen:.3f}, unseen {t_unseen:.3f}")
    for name in ("dev", "test"):
        probs, correct, known = runs[name][t_all]
        by_group = numpy.where(known, runs[name][t_seen][0], runs[name][t_unseen][0])
        print(
            f"{name}: unseen {1 - known.mean():.3f} of the entities; accuracy seen "
            f"{correct[known].mean():.4f}, unseen {correct[~known].mean():.4f}; ECE one T "
            f"{calibration.expected_calibration_error(probs, correct):.4f}, two "
            f"{calibration.expected_calibration_error(by_group, correct):.4f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
