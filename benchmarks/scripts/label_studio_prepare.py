"""The data of the simulated Label Studio session: a small training set and the tasks.

    python benchmarks/scripts/label_studio_prepare.py ../corpus/conll2003 OUTPUT
        [--share 0.02] [--tasks 600] [--seed 0]

From the corpus's training sentences (each a doc of its own), a random `--share` of the
tokens in whole sentences becomes `OUTPUT/train.spacy` (what the backend's first model is
trained on, and what it mixes into its retraining), the corpus's dev set is copied to
`OUTPUT/dev.spacy`, and `--tasks` other sentences, in random order, become
`OUTPUT/tasks.jsonl`: the text and the gold entities (`[start_char, end_char, label]`) the
simulated person gives. Research data stays in the gitignored corpus folders.
"""

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy
import spacy
from spacy.tokens import Doc, DocBin


def sentences(path: Path, vocab: spacy.vocab.Vocab) -> list[Doc]:
    """The sentences of a `.spacy` file, each a doc of its own with its gold entities."""
    found = []
    for doc in DocBin().from_disk(path).get_docs(vocab):
        parts = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
        found += [part.as_doc() for part in parts if len(part)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="a folder with train.spacy and dev.spacy")
    parser.add_argument("output", type=Path)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    nlp = spacy.blank("en")
    pool = [doc for doc in sentences(args.corpus / "train.spacy", nlp.vocab) if len(doc) > 1]
    order = numpy.random.default_rng(args.seed).permutation(len(pool))
    budget = round(args.share * sum(len(doc) for doc in pool))
    train, tasks = [], []
    for i in order:
        doc = pool[i]
        if budget > 0 and len(doc) <= budget:
            train.append(doc)
            budget -= len(doc)
        elif len(tasks) < args.tasks:
            tasks.append(doc)
    args.output.mkdir(parents=True, exist_ok=True)
    DocBin(docs=train, store_user_data=False).to_disk(args.output / "train.spacy")
    shutil.copyfile(args.corpus / "dev.spacy", args.output / "dev.spacy")
    with (args.output / "tasks.jsonl").open("w", encoding="utf8") as file_:
        for doc in tasks:
            entities = [[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents]
            file_.write(json.dumps({"text": doc.text.rstrip(), "entities": entities}) + "\n")
    words = sum(len(doc) for doc in train)
    print(
        f"{len(train):,} training sentences ({words:,} words), {len(tasks):,} tasks "
        f"({sum(len(doc.ents) for doc in tasks):,} entities) -> {args.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
