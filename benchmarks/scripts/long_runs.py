"""Memory over long runs: `nlp.pipe` over a million words, one huge document, many empty ones.

    python benchmarks/scripts/long_runs.py MODEL corpus/conll2003/test.spacy --words 1000000

Prints resident memory (RSS, from /proc) after every `--every` words of `nlp.pipe` over the
texts of DATA repeated until `--words`, then the peak while tagging one document of
`--doc-tokens` tokens (built from the same texts), and while tagging `--empty` empty texts.
A flat RSS column means that nothing accumulates from batch to batch.
"""

import argparse
import itertools
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from spacy.tokens import Doc, DocBin

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model, peak_rss_mb  # noqa: E402


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    for line in Path("/proc/self/status").read_text(encoding="utf8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status (this needs Linux)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path, help=".spacy file whose texts are repeated")
    parser.add_argument("--words", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--doc-tokens", type=int, default=500_000)
    parser.add_argument("--empty", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    nlp = spacy.load(args.model)
    texts = [doc.text for doc in DocBin().from_disk(args.data).get_docs(nlp.vocab)]
    lines = [
        f"`{args.model}` on `{args.data}`, {cpu_model()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs), torch {torch.get_num_threads()} thread(s), "
        f"{datetime.now(timezone.utc).date().isoformat()}. RSS after loading: {rss_mb():,.0f} MB.",
        "",
        "| words | RSS MB | words/s since the last row |",
        "| --- | --- | --- |",
    ]
    words, mark, start = 0, args.every, time.perf_counter()
    for doc in nlp.pipe(itertools.cycle(texts), batch_size=args.batch_size):
        words += len(doc)
        if words >= mark:
            now = time.perf_counter()
            lines.append(f"| {words:,} | {rss_mb():,.0f} | {args.every / (now - start):,.0f} |")
            print(lines[-1], flush=True)
            mark, start = mark + args.every, now
        if words >= args.words:
            break
    base = rss_mb()
    tokens = [token.text for text in texts for token in nlp.make_doc(text)]
    words_of_doc = list(itertools.islice(itertools.cycle(tokens), args.doc_tokens))
    start = time.perf_counter()
    huge = nlp(Doc(nlp.vocab, words=words_of_doc))
    seconds = time.perf_counter() - start
    lines += [
        "",
        f"One document of {len(huge):,} tokens: {seconds:.1f} s, {len(huge.ents):,} entities, "
        f"RSS {base:,.0f} MB before and {rss_mb():,.0f} MB after, peak so far "
        f"{peak_rss_mb():,.0f} MB.",
    ]
    base = rss_mb()
    start = time.perf_counter()
    empty = sum(1 for _ in nlp.pipe([""] * args.empty, batch_size=args.batch_size))
    lines.append(
        f"{empty:,} empty texts: {time.perf_counter() - start:.1f} s, RSS {base:,.0f} MB before "
        f"and {rss_mb():,.0f} MB after."
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
