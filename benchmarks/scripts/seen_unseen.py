"""Recall on test entities whose text occurs among the training entities, and on the others.

    python scripts/seen_unseen.py PIPELINE corpus/conll2003/train.spacy corpus/conll2003/test.spacy

A tagger without pretrained knowledge does well on names it saw in training and much worse on
new ones. This splits the gold test entities by whether their lowercased text is the text of
some training entity (of any type), and prints, for each group, how many there are, the share
found exactly (same span, same label), and the predicted entities of that group that are wrong.
"""

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import spacy
from spacy.tokens import Doc, DocBin


def entity_texts(docs: Iterable[Doc]) -> set[str]:
    """Lowercased texts of all entities in `docs`."""
    return {ent.text.lower() for doc in docs for ent in doc.ents}


def split_recall(
    gold: Sequence[Doc], predicted: Sequence[Doc], seen: set[str]
) -> dict[str, dict[str, int]]:
    """Per group ("seen", "unseen"): gold entities, those found exactly, and wrong predictions."""
    counts = {group: {"gold": 0, "found": 0, "wrong": 0} for group in ("seen", "unseen")}
    for gold_doc, pred_doc in zip(gold, predicted, strict=True):
        gold_spans = {(e.start_char, e.end_char, e.label_) for e in gold_doc.ents}
        pred_spans = {(e.start_char, e.end_char, e.label_) for e in pred_doc.ents}
        for ent in gold_doc.ents:
            group = counts["seen" if ent.text.lower() in seen else "unseen"]
            group["gold"] += 1
            group["found"] += (ent.start_char, ent.end_char, ent.label_) in pred_spans
        for ent in pred_doc.ents:
            if (ent.start_char, ent.end_char, ent.label_) not in gold_spans:
                counts["seen" if ent.text.lower() in seen else "unseen"]["wrong"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="trained pipeline directory")
    parser.add_argument("train", type=Path, help="training .spacy file")
    parser.add_argument("test", type=Path, help="test .spacy file")
    args = parser.parse_args(argv)
    nlp = spacy.load(args.pipeline)
    seen = entity_texts(DocBin().from_disk(args.train).get_docs(nlp.vocab))
    gold = list(DocBin().from_disk(args.test).get_docs(nlp.vocab))
    predicted = list(nlp.pipe(doc.text for doc in gold))
    for group, count in split_recall(gold, predicted, seen).items():
        recall = count["found"] / max(count["gold"], 1)
        print(
            f"{group}: {count['gold']} gold entities, recall {recall:.3f}, "
            f"{count['wrong']} wrong predictions"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
