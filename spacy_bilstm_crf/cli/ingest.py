"""`python -m spacy_bilstm_crf ingest`: an annotation tool's export as a `.spacy` file for
`spacy train`, reviewed regions labelled (`O` included) and every other token missing."""

import argparse
import sys
from pathlib import Path

import spacy
from spacy.tokens import DocBin

from ..active.formats import FORMATS, FormatError, read_answers, sent_labels
from ..active.ingest import ingest
from ..active.label_config import read_label_config
from ..annotate.records import load_pipeline
from .files import answers_file, replace_atomically, tasks_file


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ingest",
        help="read an annotation tool's export back as training data with partial labels",
        description=(
            "Read the reviewed tasks of EXPORT (Prodigy db-out JSONL, Label Studio JSON or "
            "JSON_MIN, doccano's JSONL of approved documents only, or this package's JSONL; "
            "or a round's folder holding "
            "answers.json or answers.jsonl) into OUTPUT.spacy: inside each reviewed region "
            "every token gets its label, O included; outside it tokens stay missing. "
            "Rejected, ignored, cancelled and unanswered tasks are skipped and counted; a "
            "region off the tokens is snapped to the tokens it touches; a task whose regions "
            "cannot be used is skipped with the reason."
        ),
    )
    parser.add_argument("export", help="the tool's export file, or the round's folder")
    parser.add_argument("output", help="the .spacy file to write")
    parser.add_argument("--format", choices=FORMATS, required=True, dest="task_format")
    tokenizer = parser.add_mutually_exclusive_group()
    tokenizer.add_argument("--model", help="the pipeline whose tokenizer made the tasks")
    tokenizer.add_argument("--lang", default="en", help="or: a language's tokenizer (en)")
    parser.add_argument(
        "--label-config",
        default="",
        help="Label Studio: the project's labeling config (XML), to find the text field",
    )
    parser.add_argument(
        "--all-approved",
        action="store_true",
        help="doccano: every example sent was approved (the export may then hold them all)",
    )
    parser.add_argument(
        "--sent",
        default="",
        help="doccano: the tasks as sent, to refuse its plain export (default: tasks.jsonl "
        "in the round's folder)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    export = Path(args.export)
    folder = export if export.is_dir() else None
    if folder is not None:
        export = answers_file(folder, args.task_format)
    elif not export.is_file():
        raise FormatError(f"The export file {str(export)!r} does not exist.")
    config = read_label_config(args.label_config) if args.label_config else None
    sent = None
    if args.task_format == "doccano":
        tasks = Path(args.sent) if args.sent else None
        if tasks is None and folder is not None:
            tasks = tasks_file(folder, "doccano")
        if tasks is not None and not tasks.is_file():
            raise FormatError(f"The tasks as sent, {str(tasks)!r}, do not exist.")
        sent = sent_labels(tasks) if tasks is not None else None
        if sent is None:
            print(
                "warning: without the tasks as sent (--sent), nothing checks that this is "
                "doccano's export of approved documents only",
                file=sys.stderr,
            )
    nlp = load_pipeline(args.model) if args.model else spacy.blank(args.lang)
    answers = read_answers(
        export,
        args.task_format,
        config=config,
        sent=sent,
        all_approved=args.all_approved,
    )
    result = ingest(nlp, answers)
    for where, before, after in result.snapped:
        print(f"snapped: {where}: {before!r} -> {after!r}", file=sys.stderr)
    for problem in result.problems:
        print(f"skipped: {problem.where}: {problem.detail}", file=sys.stderr)
    output = Path(args.output)
    with replace_atomically(output) as path:
        DocBin(docs=result.docs, store_user_data=False).to_disk(path)
    print(result)
    print(f"wrote {output}")
    if not result.docs:
        print(f"warning: no reviewed answer in {export}", file=sys.stderr)
    return 0
