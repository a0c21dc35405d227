"""Write a random share of a corpus's sentences, each as its own doc, to a new .spacy file.

For taggers trained on less data (the correction-propagation benchmark: 2% and 10% of
CoNLL-2003's training sentences). Sentences come from the docs' sentence starts (a doc without
them is one sentence); the sample is drawn with `--seed`, its order kept.

Usage: python benchmarks/scripts/subset_corpus.py IN.spacy OUT.spacy --share 0.02 [--seed 0]
"""

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import spacy
from spacy.tokens import DocBin


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help=".spacy file to sample from")
    parser.add_argument("output", type=Path, help=".spacy file to write")
    parser.add_argument("--share", type=float, required=True, help="share of the sentences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.share <= 1:
        parser.error(f"--share must be in (0, 1], got {args.share}")
    vocab = spacy.blank("en").vocab
    sentences = []
    for doc in DocBin().from_disk(args.source).get_docs(vocab):
        parts = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
        sentences += [part.as_doc() for part in parts]
    count = max(1, round(args.share * len(sentences)))
    chosen = sorted(random.Random(args.seed).sample(range(len(sentences)), count))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=[sentences[i] for i in chosen], store_user_data=True).to_disk(args.output)
    words = sum(len(sentences[i]) for i in chosen)
    entities = sum(len(sentences[i].ents) for i in chosen)
    print(
        f"{args.output}: {count:,} of {len(sentences):,} sentences ({args.share:.0%}), "
        f"{words:,} words, {entities:,} entities (seed {args.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
