"""`python -m spacy_bilstm_crf select`: the texts, sentences or spans a person should label
next, as tasks for Prodigy, Label Studio, doccano or this package's JSONL."""

import argparse
import sys
from pathlib import Path

from ..active.formats import FORMATS, LS_FROM, label_studio_config, read_task_ids, write_tasks
from ..active.select import select
from ..active.uncertainty import STRATEGIES, UNITS
from ..annotate.records import load_pipeline
from ..annotate.rows import AnnotateError, check_input, read_rows
from ..calibration import bilstm_crf_component


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "select",
        help="choose what to annotate next and write it as annotation tasks",
        description=(
            "Score every unit (text, sentence or span) of the unlabelled texts in INPUT "
            "(.jsonl or .parquet) by how uncertain the bilstm_crf component of MODEL is, and "
            "write the most informative to OUTPUT as tasks pre-annotated with the model's "
            "entities and their probabilities."
        ),
    )
    parser.add_argument("model", help="a pipeline folder or an installed pipeline package")
    parser.add_argument("input", help="unlabelled texts: .jsonl/.json (JSON lines) or .parquet")
    parser.add_argument("output", help="the tasks file to write")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--n", type=int, help="how many tasks")
    budget.add_argument("--tokens", type=int, help="or: how many tokens to review in all")
    parser.add_argument("--unit", choices=UNITS, default="sentence")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="mnlp",
        help="random; lc: 1 - P(best analysis); mnlp: its log probability per token; "
        "entropy: of the token posteriors (default mnlp)",
    )
    parser.add_argument("--format", choices=FORMATS, default="jsonl", dest="task_format")
    parser.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        type=Path,
        help="files of tasks already sent (any format) or of task ids, or folders of them "
        "(their .jsonl and .json files): overlapping units are skipped",
    )
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="also choose units whose text repeats a chosen one's but for case and digits "
        "(by default only the most informative of them is chosen)",
    )
    parser.add_argument("--seed", type=int, default=0, help="for the random strategy")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", help="default: id, or row numbers")
    parser.add_argument("--component", default="ner", help="the bilstm_crf component (ner)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name in ("n", "tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnnotateError(f"--{name.replace('_', '-')} must be 1 or more, got {value}.")
    output = Path(args.output)
    wanted = ".json" if args.task_format == "label-studio" else ".jsonl"
    if output.suffix != wanted:
        what = "one JSON list" if wanted == ".json" else "JSON lines"
        raise AnnotateError(
            f"{args.task_format} tasks are {what}: name the output file {output.stem}{wanted}."
        )
    source = Path(args.input)
    kind = check_input(source, args.text_column, args.id_column)
    sent = _task_files(args.exclude, output)
    exclude = [task_id for path in sent for task_id in read_task_ids(path)]
    nlp = load_pipeline(args.model)
    pipe = bilstm_crf_component(nlp, args.component)
    rows = read_rows(source, kind, args.text_column, args.id_column or "id", nlp.max_length)
    selection = select(
        nlp,
        rows,
        component=args.component,
        unit=args.unit,
        strategy=args.strategy,
        n=args.n,
        tokens=args.tokens,
        exclude=exclude,
        seed=args.seed,
        batch_size=args.batch_size,
        keep_duplicates=args.keep_duplicates,
    )
    written = write_tasks(selection.tasks, output, args.task_format)
    print(selection)
    print(f"wrote {written:,} {args.task_format} tasks to {output}")
    if args.task_format == "label-studio":
        config = output.with_name(output.stem + ".label_config.xml")
        config.write_text(label_studio_config(pipe.labels), encoding="utf-8")
        print(f"wrote the labeling config ({LS_FROM!r} regions on 'text') to {config}")
    if not written:
        print("warning: nothing to select (no usable texts, or all excluded)", file=sys.stderr)
    return 0


def _task_files(paths: list[Path], output: Path) -> list[Path]:
    """The files named, and the .jsonl and .json files in the folders named, but not the
    output (a rerun of the same round does not exclude its own tasks)."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json"))
        elif path.is_file():
            files.append(path)
        elif path.suffix:  # a folder that does not exist yet holds no tasks
            raise AnnotateError(f"--exclude {str(path)!r}: no such file.")
    return [path for path in files if path.resolve() != output.resolve()]
