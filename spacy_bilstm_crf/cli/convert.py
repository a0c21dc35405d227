"""`python -m spacy_bilstm_crf convert`: CoNLL NER files to `.spacy` (see `train/conll.py`),
for what `spacy convert` does not read: IOB1 tags, middle columns, and document starts from
`-DOCSTART-` lines or `<split>.doc_starts.txt` files."""

import argparse

from ..train import conll


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert CoNLL NER files (a file or a folder of them) to .spacy",
        description=conll.__doc__.splitlines()[0],
    )
    conll.add_arguments(parser)
    parser.set_defaults(run=conll.run)
