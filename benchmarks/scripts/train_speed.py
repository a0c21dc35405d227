"""Training steps per second of a config, on batches of about 1,000 words.

    python benchmarks/scripts/train_speed.py configs/bilstm_crf.cfg corpus/conll2003/train.spacy \\
        --vectors corpus/conll2003/vectors --threads 1 2 --steps 40

The pipeline is initialized from TRAIN (and the vectors), then `nlp.update` runs on the same
`--steps` batches of TRAIN, made as the config's batcher makes them (about 1,000 words of
whole documents), after 5 warm-up steps; the median of `--rounds` passes is printed per
thread count, next to the rate at which the pipeline predicts the same batches (a baseline
measured in the same process: a training step predicts its batch and more). To compare with
an earlier version of the package, run this script with `PYTHONPATH=<a checkout of that
version>` and its config.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from spacy.training.initialize import init_nlp
from spacy.util import load_config, registry, resolve_dot_names

import spacy_bilstm_crf

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("train", type=Path, help="training .spacy file")
    parser.add_argument("--vectors", default=None, help="[paths] vectors")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    overrides = {"paths.train": str(args.train), "paths.dev": str(args.train)}
    if args.vectors:
        overrides["paths.vectors"] = args.vectors
    config = load_config(args.config, overrides=overrides)
    nlp = init_nlp(config)
    training = registry.resolve(nlp.config.interpolate()["training"])
    optimizer = training["optimizer"]
    (corpus,) = resolve_dot_names(nlp.config.interpolate(), [training["train_corpus"]])
    batches = []
    for batch in training["batcher"](corpus(nlp)):
        batches.append(batch)
        if len(batches) == args.steps + 5:
            break
    words = statistics.mean(sum(len(eg) for eg in batch) for batch in batches)
    package = Path(spacy_bilstm_crf.__file__).parent
    lines = [
        f"`{args.config}` with the package in `{package}`: {args.steps} steps of "
        f"{words:,.0f} words on average; {cpu_model()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__}, "
        f"{datetime.now(timezone.utc).date().isoformat()}."
    ]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for _, pipe in nlp.pipeline:
            if "threads" in getattr(pipe, "cfg", {}):
                pipe.cfg["threads"] = threads
        for batch in batches[:5]:
            nlp.update(batch, sgd=optimizer, drop=training["dropout"])
        rates, predicting = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for batch in batches[5:]:
                nlp.update(batch, sgd=optimizer, drop=training["dropout"])
            rates.append(args.steps / (time.perf_counter() - start))
            start = time.perf_counter()
            for batch in batches[5:]:
                list(nlp.pipe(eg.reference.text for eg in batch))
            predicting.append(args.steps / (time.perf_counter() - start))
        lines.append(
            f"- {threads} thread(s): {statistics.median(rates):.2f} steps/s "
            f"(predicting the same batches: {statistics.median(predicting):.2f} batches/s)"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
