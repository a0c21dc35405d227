"""Probe: recall-biased decoding. Subtract a constant from the `O` tag's emission scores
before Viterbi and score dev and test for each constant.

    python benchmarks/probes/o_bias.py MODEL DEV.spacy TEST.spacy 0 1 2
"""

import sys
from collections.abc import Sequence

import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example

import spacy_bilstm_crf.model as bilstm_crf_model


def main(argv: Sequence[str]) -> None:
    model, dev, test, *biases = argv
    torch.set_num_threads(1)
    nlp = spacy.load(model)
    tagger = nlp.get_pipe("ner").model.get_ref("tagger")
    o_tag = tagger.attrs["tag_names"].index("O")
    decode = bilstm_crf_model.tagger_decode
    bias = {"value": 0.0}

    def biased_decode(model, emissions):
        shifted = [array.copy() for array in emissions]
        for array in shifted:
            array[:, o_tag] -= bias["value"]
        return decode(model, shifted)

    bilstm_crf_model.tagger_decode = biased_decode
    sets = {
        name: list(DocBin().from_disk(path).get_docs(nlp.vocab))
        for name, path in (("dev", dev), ("test", test))
    }
    for value in map(float, biases):
        bias["value"] = value
        row = [f"O bias {value:g}"]
        for name, gold in sets.items():
            scores = nlp.evaluate([Example(nlp.make_doc(doc.text), doc) for doc in gold])
            row.append(
                f"{name} P {100 * scores['ents_p']:.2f} R {100 * scores['ents_r']:.2f} "
                f"F {100 * scores['ents_f']:.2f}"
            )
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
