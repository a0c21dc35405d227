"""How long `select` takes to score a pool, against an `nlp.pipe` pass over the same texts.

    python benchmarks/scripts/select_speed.py MODEL corpus/conll2003/train.spacy --threads 1

The texts of the `.spacy` file are the pool (as `select` reads them: tokenized again). Each
measurement is the best of `--rounds` runs, interleaved: the pipeline's own `nlp.pipe`
(tokenizer and tagger, batches of 256), then `select` with each unit and strategy keeping
100 tasks, which also runs the tagger and adds the posteriors, the best analyses and the
ranking.
"""

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin

from spacy_bilstm_crf.active.select import select
from spacy_bilstm_crf.annotate.rows import Row

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402

SETTINGS = [("doc", "mnlp"), ("sentence", "mnlp"), ("sentence", "entropy"), ("span", "lc")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path, help="a .spacy file whose texts are the pool")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nlp = spacy.load(args.model)
    for name in nlp.pipe_names:
        if nlp.get_pipe_meta(name).factory == "bilstm_crf":
            nlp.get_pipe(name).cfg["threads"] = args.threads
    texts = [doc.text for doc in DocBin().from_disk(args.data).get_docs(nlp.vocab)]
    words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))
    timings: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in nlp.pipe(texts, batch_size=256):
            pass
        timings.setdefault("nlp.pipe", []).append(time.perf_counter() - start)
        for unit, strategy in SETTINGS:
            rows = (Row(i, text, None) for i, text in enumerate(texts))
            start = time.perf_counter()
            select(nlp, rows, unit=unit, strategy=strategy, n=100)
            timings.setdefault(f"select {unit} {strategy}", []).append(time.perf_counter() - start)
    base = min(timings["nlp.pipe"])
    print(
        f"{len(texts):,} texts, {words:,} words of {args.data}; {args.threads} thread(s), "
        f"{cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
        f"{datetime.now(timezone.utc).date().isoformat()}; best of {args.rounds}"
    )
    print("\n| pass | seconds | words/s | against nlp.pipe |\n| --- | --- | --- | --- |")
    for name, seconds in timings.items():
        best = min(seconds)
        print(f"| {name} | {best:.2f} | {words / best:,.0f} | {best / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
