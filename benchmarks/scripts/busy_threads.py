"""Speed on an idle and on a busy machine, with the default threads and with one thread.

    python benchmarks/scripts/busy_threads.py MODEL corpus/conll2003/test.spacy \\
        corpus/conll2003/train.spacy --config configs/bilstm_crf.cfg --output metrics/busy.md

Four cases in one run: idle or busy (one CPU-bound process on every core, started for the
measurement and stopped after), times the default settings (the component's `threads = 0`,
torch's own thread count) or one thread (`threads = 1`, `torch.set_num_threads(1)`). For
each: `nlp.pipe` words/s over the texts of DATA, and training steps/s of CONFIG on batches of
about 1,000 words from TRAIN (`nlp.update` after a short warm-up). A case is the median of
`--rounds` passes.
"""

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.training.initialize import init_nlp
from spacy.util import load_config, registry

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from seed_runs import write_lines  # noqa: E402
from speed import cpu_model  # noqa: E402


def _spin() -> None:
    """A CPU-bound loop, as another job on the machine."""
    while True:
        sum(i * i for i in range(10_000))


@contextmanager
def busy(active: bool) -> Iterator[None]:
    """One spinning process per CPU while the block runs, when `active`."""
    workers = []
    if active:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def use_threads(nlp: spacy.Language, threads: int | None, default_torch: int) -> None:
    """`threads` for the bilstm_crf components and torch; None: the defaults."""
    torch.set_num_threads(threads or default_torch)
    for _, pipe in nlp.pipeline:
        if "threads" in getattr(pipe, "cfg", {}):
            pipe.cfg["threads"] = threads or 0


def pipe_rate(nlp: spacy.Language, texts: list[str]) -> float:
    start = time.perf_counter()
    words = sum(len(doc) for doc in nlp.pipe(texts, batch_size=256))
    return words / (time.perf_counter() - start)


def training_batches(nlp: spacy.Language, path: Path, count: int) -> list[list[Example]]:
    batches, batch, words = [], [], 0
    for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
        batch.append(Example(nlp.make_doc(doc.text), doc))
        words += len(doc)
        if words >= 1000:
            batches.append(batch)
            batch, words = [], 0
            if len(batches) == count:
                break
    return batches


def step_rate(nlp: spacy.Language, optimizer, batches: list[list[Example]]) -> float:
    start = time.perf_counter()
    for batch in batches:
        nlp.update(batch, sgd=optimizer, drop=0.1)
    return len(batches) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="trained pipeline for nlp.pipe")
    parser.add_argument("data", type=Path, help=".spacy file whose texts are processed")
    parser.add_argument("train", type=Path, help=".spacy training file for the steps")
    parser.add_argument("--config", type=Path, required=True, help="config to train")
    parser.add_argument("--vectors", default=None, help="[paths] vectors for the config")
    parser.add_argument("--texts", type=int, default=800, help="texts for nlp.pipe")
    parser.add_argument("--steps", type=int, default=20, help="training steps per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    default_torch = torch.get_num_threads()
    nlp = spacy.load(args.model)
    texts = [d.text for d in DocBin().from_disk(args.data).get_docs(nlp.vocab)][: args.texts]
    overrides = {"paths.train": str(args.train), "paths.dev": str(args.train)}
    if args.vectors:
        overrides["paths.vectors"] = args.vectors
    config = load_config(args.config, overrides=overrides)
    trainer = init_nlp(config)
    optimizer = registry.resolve(trainer.config.interpolate()["training"])["optimizer"]
    batches = training_batches(trainer, args.train, args.steps + 3)
    results = {}
    for loaded in (False, True):
        with busy(loaded):
            for threads in (None, 1):
                use_threads(nlp, threads, default_torch)
                use_threads(trainer, threads, default_torch)
                pipe_rate(nlp, texts[:50])
                step_rate(trainer, optimizer, batches[:3])
                words = [pipe_rate(nlp, texts) for _ in range(args.rounds)]
                steps = [step_rate(trainer, optimizer, batches[3:]) for _ in range(args.rounds)]
                results[(loaded, threads)] = (statistics.median(words), statistics.median(steps))
    date = datetime.now(timezone.utc).date().isoformat()
    lines = [
        f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__}, "
        f"{date}. Default: the component's `threads = 0` and torch's {default_torch} thread(s); "
        f"busy: one CPU-bound process on each of the {os.cpu_count()} CPUs. `nlp.pipe` over "
        f"{len(texts)} texts of `{args.data}`; training steps of `{args.config}` on batches of "
        f"about 1,000 words; medians of {args.rounds} passes.",
        "",
        "| machine | threads | nlp.pipe words/s | training steps/s |",
        "| --- | --- | --- | --- |",
    ]
    for (loaded, threads), (words, steps) in results.items():
        machine = "busy" if loaded else "idle"
        setting = "default" if threads is None else str(threads)
        lines.append(f"| {machine} | {setting} | {words:,.0f} | {steps:.2f} |")
    for loaded in (False, True):
        words = [results[(loaded, t)][0] for t in (None, 1)]
        steps = [results[(loaded, t)][1] for t in (None, 1)]
        lines.append(
            f"\n{'Busy' if loaded else 'Idle'}: the default is {max(words) / words[0]:.2f}x "
            f"slower than the best thread count for nlp.pipe, {max(steps) / steps[0]:.2f}x "
            "for training (1.00x: the default is the best)."
        )
    write_lines(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
