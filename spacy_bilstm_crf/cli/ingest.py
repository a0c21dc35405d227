"""`python -m spacy_bilstm_crf ingest`: an annotation tool's export as a `.spacy` file for
`spacy train`, reviewed regions labelled (`O` included) and every other token missing."""

import argparse
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from ..active.formats import FORMATS, FormatError, read_answers
from ..active.ingest import ingest
from ..annotate.records import load_pipeline


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ingest",
        help="read an annotation tool's export back as training data with partial labels",
        description=(
            "Read the reviewed tasks of EXPORT (Prodigy db-out JSONL, Label Studio JSON, "
            "doccano JSONL or this package's JSONL) into OUTPUT.spacy: inside each reviewed "
            "region every token gets its label, O included; outside it tokens stay missing. "
            "Rejected, ignored and cancelled tasks are skipped and counted."
        ),
    )
    parser.add_argument("export", help="the tool's export file")
    parser.add_argument("output", help="the .spacy file to write")
    parser.add_argument("--format", choices=FORMATS, required=True, dest="task_format")
    tokenizer = parser.add_mutually_exclusive_group()
    tokenizer.add_argument("--model", help="the pipeline whose tokenizer made the tasks")
    tokenizer.add_argument("--lang", default="en", help="or: a language's tokenizer (en)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    export = Path(args.export)
    if not export.is_file():
        raise FormatError(f"The export file {str(export)!r} does not exist.")
    nlp = load_pipeline(args.model) if args.model else spacy.blank(args.lang)
    result = ingest(nlp, read_answers(export, args.task_format))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=result.docs, store_user_data=False).to_disk(output)
    print(result)
    print(f"wrote {output}")
    return 0
