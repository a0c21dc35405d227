"""Words per second of several trained pipelines, side by side in one process.

    python benchmarks/scripts/speed_table.py corpus/conll2003/test.spacy \\
        bilstm_crf=training/conll2003/bilstm_crf/model-best \\
        spacy_efficiency=training/conll2003/spacy_efficiency/model-best \\
        --threads 1 2 --rounds 5 --output metrics/speed.md

The texts of DATA go through `nlp.pipe` (tokenizer included, `--batch-size` docs a batch) for
each pipeline in turn, `--rounds` times per thread count, the order rotating from round to
round so that machine noise hits every pipeline alike; the table has the median words/s and
its ratio to the first pipeline. For `bilstm_crf` components the thread count is the
component's `threads` setting; other pipelines get it as torch's thread count (spaCy's own
models compute with NumPy on one thread). Peak memory is measured for each pipeline in a
process of its own (`scripts/speed.py`, one pass).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from seed_runs import write_lines  # noqa: E402
from speed import cpu_model  # noqa: E402


def set_threads(nlp: spacy.Language, threads: int) -> None:
    """Give the pipeline `threads` threads: the bilstm_crf setting, and torch's."""
    torch.set_num_threads(threads)
    for _, pipe in nlp.pipeline:
        if "threads" in getattr(pipe, "cfg", {}):
            pipe.cfg["threads"] = threads


def words_per_second(nlp: spacy.Language, texts: Sequence[str], batch_size: int) -> float:
    start = time.perf_counter()
    words = sum(len(doc) for doc in nlp.pipe(texts, batch_size=batch_size))
    return words / (time.perf_counter() - start)


def peak_memory(model: Path, data: Path, threads: int) -> float:
    """Peak RSS in MB of one `nlp.pipe` pass in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "speed.json"
        command = [sys.executable, str(SCRIPTS / "speed.py"), str(model), str(data)]
        command += ["--threads", str(threads), "--repeats", "1", "--output", str(output)]
        subprocess.run(command, check=True, capture_output=True)
        return json.loads(output.read_text(encoding="utf8"))["peak_rss_mb"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help=".spacy file whose texts are processed")
    parser.add_argument("pipelines", nargs="+", help="NAME=PATH of trained pipelines")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    named = [item.partition("=") for item in args.pipelines]
    if any(not sep for _, sep, _ in named):
        parser.error("pipelines are NAME=PATH")
    pipelines = {name: spacy.load(path) for name, _, path in named}
    paths = {name: Path(path) for name, _, path in named}
    first = next(iter(pipelines.values()))
    texts = [doc.text for doc in DocBin().from_disk(args.data).get_docs(first.vocab)]
    words = sum(len(doc) for doc in first.tokenizer.pipe(texts))
    rates: dict[tuple[str, int], list[float]] = {}
    names = list(pipelines)
    for threads in args.threads:
        for nlp in pipelines.values():
            set_threads(nlp, threads)
            words_per_second(nlp, texts[:200], args.batch_size)  # warm up
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                set_threads(pipelines[name], threads)
                rate = words_per_second(pipelines[name], texts, args.batch_size)
                rates.setdefault((name, threads), []).append(rate)
    memory = {name: peak_memory(paths[name], args.data, max(args.threads)) for name in names}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    date = datetime.now(timezone.utc).date().isoformat()
    lines = [
        f"`nlp.pipe` words/s on `{args.data}` ({len(texts):,} texts, {words:,} words, batches "
        f"of {args.batch_size}), median of {args.rounds} interleaved rounds; "
        f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} CPUs), torch "
        f"{torch.__version__}, spaCy {spacy.__version__}, {date}, load {load:.2f} at the end. "
        f"Ratios against `{names[0]}`; peak RSS of one pass in a process of its own, "
        f"{max(args.threads)} thread(s).",
        "",
        "| pipeline | " + " | ".join(f"{t} thread(s)" for t in args.threads) + " | peak RSS |",
        "| --- |" + " --- |" * (len(args.threads) + 1),
    ]
    for name in names:
        cells = []
        for threads in args.threads:
            median = statistics.median(rates[(name, threads)])
            base = statistics.median(rates[(names[0], threads)])
            cells.append(f"{median:,.0f} ({median / base:.2f}x)")
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {memory[name]:,.0f} MB |")
    if len(args.threads) > 1:
        low, high = min(args.threads), max(args.threads)
        medians = {key: statistics.median(values) for key, values in rates.items()}
        gains = [f"`{name}` {medians[(name, high)] / medians[(name, low)]:.2f}x" for name in names]
        lines += ["", f"{high} threads against {low}: " + ", ".join(gains) + "."]
    write_lines(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
