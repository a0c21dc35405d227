"""Measure a trained pipeline's throughput (words per second) and peak memory, on CPU or GPU.

    python scripts/speed.py PIPELINE DATA.spacy --threads 2 --repeats 3 --output speed.json

The texts of the Docs in DATA.spacy go through `nlp.pipe`, tokenizer included, once to warm
up and then `--repeats` times. The result is the median words per second of the timed passes.
Each timed pass follows a pass of the tokenizer alone over the same texts, whose median rate is
recorded too: a baseline measured under the same conditions, which `nlp.pipe` cannot beat.
The peak resident memory of the process (Linux `VmHWM`, else `getrusage`) includes loading
the pipeline. Run both pipelines with the same settings to compare them.

`--threads` sets torch's CPU threads, which the `bilstm_crf` component uses. spaCy's own
models, such as its `ner`, compute with thinc's NumPy ops, whose matrix products (blis) run on
one thread. `--gpu-id N` runs the pipeline on that GPU instead, and also reports its peak GPU
memory.
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import spacy
import torch
from spacy.tokens import DocBin


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows) and the vector
    instructions torch's kernels use on it (AVX2, AVX512): words/s ratios between torch and
    spaCy's NumPy models depend on them."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux's `VmHWM` counts this program's memory only. `getrusage` (the fallback elsewhere) also
    counts the parent's memory when this process was forked from a large one, since a forked
    child starts with its parent's pages and `exec` keeps that peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def words_per_second(nlp: spacy.Language, texts: Sequence[str], batch_size: int) -> float:
    """Run all `texts` through `nlp.pipe` once and return the words (tokens) per second."""
    start = time.perf_counter()
    words = sum(len(doc) for doc in nlp.pipe(texts, batch_size=batch_size))
    return words / (time.perf_counter() - start)


def tokenizer_words_per_second(nlp: spacy.Language, texts: Sequence[str]) -> float:
    """Words per second of the tokenizer alone over `texts`: the first step of `nlp.pipe`."""
    start = time.perf_counter()
    words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))
    return words / (time.perf_counter() - start)


def measure(
    pipeline: Path,
    data: Path,
    threads: int,
    repeats: int,
    batch_size: int,
    gpu_id: int | None = None,
) -> dict[str, Any]:
    """Load `pipeline` (onto GPU `gpu_id` if given) and time it on the texts of `data`."""
    if threads < 1 or repeats < 1:
        raise ValueError("threads and repeats must be at least 1")
    torch.set_num_threads(threads)
    if gpu_id is not None and gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    else:
        gpu_id = None
    nlp = spacy.load(pipeline)
    texts = [doc.text for doc in DocBin().from_disk(data).get_docs(nlp.vocab)]
    if not texts:
        raise ValueError(f"{data} has no docs")
    words_per_second(nlp, texts, batch_size)
    runs, baseline = [], []
    for _ in range(repeats):
        baseline.append(tokenizer_words_per_second(nlp, texts))
        runs.append(words_per_second(nlp, texts, batch_size))
    gpu = {}
    if gpu_id is not None:
        gpu = {
            "gpu": torch.cuda.get_device_name(gpu_id),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(gpu_id) / 2**20, 1),
        }
    return {
        "pipeline": str(pipeline),
        "data": str(data),
        "docs": len(texts),
        "words": sum(len(doc) for doc in nlp.tokenizer.pipe(texts)),
        "words_per_second": round(statistics.median(runs)),
        "runs_words_per_second": [round(run) for run in runs],
        "tokenizer_words_per_second": round(statistics.median(baseline)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": threads,
        "batch_size": batch_size,
        "cpu": cpu_model(),
        **gpu,
        "spacy": spacy.__version__,
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="trained pipeline directory")
    parser.add_argument("data", type=Path, help=".spacy file whose texts are processed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after a warm-up")
    parser.add_argument("--batch-size", type=int, default=64, help="docs per nlp.pipe batch")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--gpu-id", type=int, default=-1, help="run on this GPU (-1: CPU)")
    args = parser.parse_args(argv)
    result = measure(
        args.pipeline, args.data, args.threads, args.repeats, args.batch_size, args.gpu_id
    )
    print(
        f"{args.pipeline}: {result['words_per_second']:,} words/s "
        f"(median of {args.repeats}: {result['runs_words_per_second']}), "
        f"peak RSS {result['peak_rss_mb']:,} MB, {result['words']:,} words, "
        f"{result['threads']} thread(s) on {result.get('gpu', result['cpu'])}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
