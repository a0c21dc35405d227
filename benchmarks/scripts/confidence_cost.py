"""Words/s of `nlp.pipe` with confidence off, with one temperature, and with the two
group temperatures (entities seen in training and new ones), interleaved rounds, 1 thread.

    python benchmarks/scripts/confidence_cost.py MODEL TEST.spacy TRAIN.spacy [ROUNDS]

The temperatures are set, not fitted (their values do not change the work): what is
measured is the second forward-backward pass that the two temperatures need.
"""

import statistics
import sys
import time
from collections.abc import Sequence

import spacy
import torch
from spacy.tokens import DocBin

from spacy_bilstm_crf.calibration import read_examples
from spacy_bilstm_crf.pipeline.known_entities import training_keys

SETTINGS = {
    "confidence off": {"confidence": False},
    "one temperature": {"confidence": True, "seen_temperature": None, "unseen_temperature": None},
    "two temperatures": {"confidence": True, "seen_temperature": 1.4, "unseen_temperature": 1.9},
}


def main(argv: Sequence[str]) -> None:
    model, test, train, *rest = argv
    rounds = int(rest[0]) if rest else 5
    torch.set_num_threads(1)
    nlp = spacy.load(model, config={"components": {"ner": {"threads": 1}}})
    pipe = nlp.get_pipe("ner")
    pipe.cfg.update(temperature=1.7, known_entities=training_keys(read_examples(nlp, train)))
    texts = [doc.text for doc in DocBin().from_disk(test).get_docs(nlp.vocab)]
    words = sum(len(nlp.make_doc(text)) for text in texts)
    speeds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(rounds):
        for name, values in SETTINGS.items():
            pipe.cfg.update(values)
            start = time.perf_counter()
            list(nlp.pipe(texts, batch_size=256))
            speeds[name].append(words / (time.perf_counter() - start))
    off = statistics.median(speeds["confidence off"])
    for name, values in speeds.items():
        speed = statistics.median(values)
        print(f"{name}: {speed:,.0f} words/s, {off / speed:.2f}x the time of confidence off")


if __name__ == "__main__":
    main(sys.argv[1:])
