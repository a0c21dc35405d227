"""`python -m spacy_bilstm_crf select`: the texts, sentences or spans a person should label
next, as tasks for Prodigy, Label Studio, doccano or this package's JSONL."""

import argparse
import sys
from pathlib import Path

from ..active.formats import FORMATS, read_task_ids, write_tasks
from ..active.label_config import LabelConfig, default_config, read_label_config
from ..active.select import Selection, select
from ..active.uncertainty import STRATEGIES, UNITS
from ..annotate.records import load_pipeline
from ..annotate.rows import AnnotateError, check_input, read_rows
from ..calibration import bilstm_crf_component
from .files import config_file, replace_atomically, suffix, tasks_file


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
    parser.add_argument(
        "output",
        help="the tasks file to write, or a round's folder: tasks.json (Label Studio) or "
        "tasks.jsonl in it",
    )
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
    parser.add_argument(
        "--label-config",
        default="",
        help="Label Studio: the project's labeling config (XML); the tasks take its tag "
        "names, text field and labels (default: write one beside the tasks)",
    )
    parser.add_argument(
        "--component", help="the bilstm_crf component, when the pipeline has several"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name in ("n", "tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AnnotateError(f"--{name.replace('_', '-')} must be 1 or more, got {value}.")
    output = Path(args.output)
    folder = output if output.is_dir() or not output.suffix else None
    if folder is not None:
        output = tasks_file(folder, args.task_format)
    wanted = suffix(args.task_format)
    if output.suffix != wanted:
        what = "one JSON list" if wanted == ".json" else "JSON lines"
        raise AnnotateError(
            f"{args.task_format} tasks are {what}: name the output file {output.stem}{wanted}."
        )
    config = read_label_config(args.label_config) if args.label_config else None
    source = Path(args.input)
    kind = check_input(source, args.text_column, args.id_column)
    sent = _task_files(args.exclude, output, folder)
    exclude = [task_id for path in sent for task_id in read_task_ids(path)]
    nlp = load_pipeline(args.model)
    pipe = bilstm_crf_component(nlp, args.component)
    rows = read_rows(source, kind, args.text_column, args.id_column or "id", nlp.max_length)
    selection = select(
        nlp,
        rows,
        component=pipe.name,
        unit=args.unit,
        strategy=args.strategy,
        n=args.n,
        tokens=args.tokens,
        exclude=exclude,
        seed=args.seed,
        batch_size=args.batch_size,
        keep_duplicates=args.keep_duplicates,
    )
    if args.task_format == "label-studio":
        config = _label_studio_config(config, pipe.labels, selection, output, args.unit)
    with replace_atomically(output) as path:
        written = write_tasks(selection.tasks, path, args.task_format, config)
    report = f"{selection}\nwrote {written:,} {args.task_format} tasks to {output}"
    print(report)
    if folder is not None:  # the round's receipt, which the project tracks
        (folder / "selection.txt").write_text(report + "\n", encoding="utf-8")
    if not written:
        print("warning: nothing to select (no usable texts, or all excluded)", file=sys.stderr)
    return 0


def _label_studio_config(
    config: LabelConfig | None,
    model_labels: tuple[str, ...],
    selection: Selection,
    output: Path,
    unit: str,
) -> LabelConfig:
    """The user's config, its differences from the model's labels said once; or, without
    one, a config for the tasks written beside them."""
    if config is None:
        path = config_file(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(default_config(model_labels, unit == "span"), encoding="utf-8")
        print(f"wrote the labeling config for the Label Studio project to {path}")
        return LabelConfig(labels=tuple(model_labels))
    lacks, unknown = config.differences(model_labels)
    if lacks:
        left_out = sum(e.label in lacks for task in selection.tasks for e in task.entities)
        print(
            f"warning: the labeling config lacks the model's labels {lacks}: "
            f"{left_out:,} predicted regions with them are left out of the tasks",
            file=sys.stderr,
        )
    if unknown:
        print(
            f"warning: the model does not know the config's labels {unknown}: it predicts "
            "none of them until it is trained on answers that have them",
            file=sys.stderr,
        )
    print(
        f"tasks named for the labeling config: regions {config.from_name!r} on "
        f"{config.to_name!r}, text in the field {config.text_field!r}"
    )
    return config


def _task_files(paths: list[Path], output: Path, folder: Path | None) -> list[Path]:
    """The files named, and the .jsonl and .json files in the folders named, but not the
    output, nor anything in the round's own folder when writing one (a rerun of a round
    excludes neither its own tasks nor their answers)."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json"))
        elif path.is_file():
            files.append(path)
        elif path.suffix:  # a folder that does not exist yet holds no tasks
            raise AnnotateError(f"--exclude {str(path)!r}: no such file.")
    own = folder.resolve() if folder is not None else None
    return [
        path
        for path in files
        if path.resolve() != output.resolve() and path.resolve().parent != own
    ]
