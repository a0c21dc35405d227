"""Train a config on a converted dataset with `spacy train`, timed, on a fixed number of
threads, and make sure that `model-best` has seen the last step.

    python scripts/train.py configs/bilstm_crf.cfg training/mydata/bilstm_crf
        --corpus corpus/mydata [--vectors corpus/mydata/vectors] [--lang en] [--seed 0]
        [--gpu-id -1] [--max-steps 6000] [--eval-frequency 200] [--threads 2] [--budget 0]
        [--transformer NAME] [--reviewed corpus/mydata/reviewed]
        [--timing metrics/mydata/bilstm_crf-train.json] [-- OVERRIDES]

spaCy evaluates every `eval_frequency` steps and keeps the best checkpoint as `model-best`.
A run that ends off that grid (`max_steps` not a multiple of it, or the budget stops it)
never scored its last weights, and with `max_steps` below `eval_frequency` `model-best` would
be the untrained step 0. So `eval_frequency` is capped at `max_steps`, and after training
this scores `model-last` on the dev set as spaCy scores its checkpoints and copies it over
`model-best` when it is better; in a run too short for any evaluation but step 0 and the
last, the trained weights are kept even when the untrained ones happened to score higher.

The command line follows the config: `training.optimizer.learn_rate.total_steps` follows
`--max-steps` where the config has a schedule with `total_steps`, `bilstm_crf` components get
`--threads`, `paths.transformer` takes `--transformer` where the config has it, and a vectors
folder without vectors (the project's `none`) is not given to spaCy at all, which would warn
that it is "almost certainly a mistake". The timing JSON is `timed_run.py`'s.
"""

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy
import spacy
import srsly
from spacy.training.loop import create_evaluation_callback
from spacy.util import load_config, resolve_dot_names
from timed_run import run_timed, write_record


def has_vectors(folder: Path) -> bool:
    """Whether a pipeline or vectors folder holds a vectors table with rows, read from the
    saved array's header instead of loading the table."""
    saved = folder / "vocab" / "vectors"
    if not saved.is_file():
        saved = folder / "vectors"
    if not saved.is_file():
        return False
    settings = saved.with_name("vectors.cfg")
    if settings.is_file() and srsly.read_json(settings).get("mode") == "floret":
        return True
    return numpy.load(saved, mmap_mode="r", allow_pickle=False).shape[0] > 0


def overrides(args: argparse.Namespace) -> list[str]:
    """The `spacy train` options for these arguments and this config."""
    config = load_config(args.config, interpolate=False)
    found = [
        "--paths.train",
        str(training_data(args.corpus / "train.spacy", args.reviewed, args.output)),
        "--paths.dev",
        str(args.corpus / "dev.spacy"),
        "--system.seed",
        str(args.seed),
        "--training.max_steps",
        str(args.max_steps),
        "--training.eval_frequency",
        str(min(args.eval_frequency, args.max_steps)),
    ]
    vectors = args.vectors
    found += ["--paths.vectors", str(vectors) if vectors and has_vectors(vectors) else "null"]
    if args.lang:
        found += ["--nlp.lang", args.lang]
    schedule = config["training"]["optimizer"].get("learn_rate")
    if isinstance(schedule, dict) and "total_steps" in schedule:
        found += ["--training.optimizer.learn_rate.total_steps", str(args.max_steps)]
    for name, component in config["components"].items():
        if component.get("factory") == "bilstm_crf":
            found += [f"--components.{name}.threads", str(args.threads)]
    if args.transformer and "transformer" in config["paths"]:
        found += ["--paths.transformer", args.transformer]
    return found


def training_data(train: Path, reviewed: Path | None, output: Path) -> Path:
    """`train`, or with reviewed files a folder of links to it and to them (spaCy's corpus
    reader takes one path: a file, or a folder whose .spacy files it reads)."""
    extra = sorted(reviewed.glob("*.spacy")) if reviewed is not None and reviewed.is_dir() else []
    if not extra:
        return train
    folder = output / "train-data"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, source in enumerate([train, *extra]):
        (folder / f"{i:03d}-{source.name}").symlink_to(source.resolve())
    print(f"train: {train} and {len(extra)} reviewed file(s) from {reviewed}")
    return folder


def dev_score(model: Path) -> tuple[float, dict[str, Any]]:
    """The weighted dev score of a saved pipeline, as `spacy train` scores checkpoints: its
    own config's dev corpus and score weights."""
    nlp = spacy.load(model)
    config = nlp.config.interpolate()
    training = config["training"]
    (dev_corpus,) = resolve_dot_names(config, [training["dev_corpus"]])
    return create_evaluation_callback(nlp, dev_corpus, training["score_weights"])()


def keep_last_if_better(output: Path, short: bool) -> str:
    """Score `model-last` and `model-best` on dev; copy the last over the best when it scores
    higher, when no best was saved, or in a `short` run (evaluated only at step 0 and at its
    last step), where the other checkpoint is the untrained model. Returns a line that says
    what happened."""
    last, best = output / "model-last", output / "model-best"
    if not last.is_dir():
        return f"no {last}: nothing to check"
    last_score, scores = dev_score(last)
    note = ""
    if best.is_dir():
        best_score, _ = dev_score(best)
        if last_score <= best_score and not (short and last_score < best_score):
            return (
                f"model-best ({best_score:.4f} on dev) is at least as good as the final "
                f"weights ({last_score:.4f}); kept"
            )
        if last_score < best_score:
            note = (
                f"; the untrained model scored higher ({best_score:.4f}): too few steps to "
                "learn, raise max_steps"
            )
        shutil.rmtree(best)
        was = f"{best_score:.4f}"
    else:
        was = "none saved"
    shutil.copytree(last, best)
    meta = srsly.read_json(best / "meta.json")
    meta["performance"] = {
        **meta.get("performance", {}),
        **{key: value for key, value in scores.items() if isinstance(value, (int, float))},
    }
    srsly.write_json(best / "meta.json", meta)
    return f"model-best is the final weights ({last_score:.4f} on dev; before: {was}){note}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns `spacy train`'s exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="train.spacy and dev.spacy")
    parser.add_argument("--vectors", type=Path, help="a pipeline or vectors folder")
    parser.add_argument(
        "--reviewed",
        type=Path,
        help="a folder of .spacy files to train on besides train.spacy (ingested answers)",
    )
    parser.add_argument("--lang", help="the language, as spaCy's code (en, nl, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-id", type=int, default=-1)
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--eval-frequency", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--budget", type=float, default=0, help="seconds (0: none)")
    parser.add_argument("--transformer", help="a Hugging Face name or folder")
    parser.add_argument("--timing", type=Path, help="write the wall time here, as JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1 :]  # more `spacy train` options, after --
    if args.max_steps < 1 or args.eval_frequency < 1:
        parser.error("--max-steps and --eval-frequency must be positive")
    command = [sys.executable, "-m", "spacy", "train", str(args.config)]
    command += ["--output", str(args.output), "--gpu-id", str(args.gpu_id)]
    command += overrides(args) + extra
    try:
        run = run_timed(command, args.threads, args.budget)
    except (ValueError, OSError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    if run.status != 0:
        print(f"train: spacy train failed with exit status {run.status}", file=sys.stderr)
        return run.status
    if args.gpu_id >= 0:
        spacy.require_gpu(args.gpu_id)
    short = args.max_steps <= args.eval_frequency
    print(f"train: {keep_last_if_better(args.output, short)}")
    if args.timing is not None:
        write_record(args.timing, command, run, args.threads, args.budget)
    print(f"train: {run.seconds:.1f} s with {args.threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
