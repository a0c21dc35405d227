"""Time `CRF.nbest` (k-best Viterbi) against `CRF.decode` on CPU, with BIO constraints.

For each shape `B x T x K` it times decoding down to padded tensors: `decode`, then `nbest`
for several `k`, sampled interleaved so that machine noise hits all alike, and prints a
Markdown table of medians with each `nbest` time as a multiple of `decode`'s. It exits non-zero
if `nbest(k=1)` differs from `decode` in any path or score, never because of speed.

Usage: python benchmarks/nbest_speed.py [--repeats N] [--threads N] [--k 1 2 5 10]
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from spacy_bilstm_crf import CRF, allowed_transitions, tag_names

SHAPES = [(64, 12, 9), (64, 40, 9), (64, 40, 37), (32, 256, 9), (256, 20, 9)]
MIN_SAMPLE_S = 0.005


def make_case(
    batch: int, steps: int, num_tags: int, seed: int
) -> tuple[CRF, torch.Tensor, torch.Tensor]:
    """A BIO CRF with random scores, emissions, and a mask with lengths in [T//2, T]."""
    gen = torch.Generator().manual_seed(seed)
    labels = [f"L{i}" for i in range((num_tags - 1) // 2)]
    crf = CRF(num_tags, allowed_transitions(tag_names(labels), "BIO"))
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    emissions = torch.randn(batch, steps, num_tags, generator=gen) * 2.0  # shape: (B, T, K)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=gen)  # shape: (B,)
    mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)  # shape: (B, T)
    return crf, emissions, mask


def median_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each function, sampled in rotating order."""
    counts = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        call()
        counts[name] = max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-6)) + 1)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(counts[name]):
                calls[name]()
            times[name].append((time.perf_counter() - start) / counts[name])
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed samples per cell")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 5, 10], help="paths per row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32; BIO")
    print(f"Load average (1 min) at start: {os.getloadavg()[0]:.2f}\n")
    print("| B x T x K | decode ms | " + " | ".join(f"nbest k={k} ms" for k in args.k) + " |")
    print("|---|---:|" + "---:|" * len(args.k))
    all_ok = True
    for index, (batch, steps, num_tags) in enumerate(SHAPES):
        crf, emissions, mask = make_case(batch, steps, num_tags, seed=index)
        paths, scores = crf.decode(emissions, mask)
        first_paths, first_scores = crf.nbest(emissions, mask, k=1)
        ok = torch.equal(first_paths[:, 0], paths) and torch.equal(first_scores[:, 0], scores)
        all_ok &= ok
        calls: dict[str, Callable[[], object]] = {"decode": partial(crf.decode, emissions, mask)}
        for k in args.k:
            calls[f"k={k}"] = partial(crf.nbest, emissions, mask, k=k)
        ms = median_ms(calls, args.repeats)
        cells = " | ".join(
            f"{ms[f'k={k}']:.2f} ({ms[f'k={k}'] / ms['decode']:.1f}x)" for k in args.k
        )
        flag = "" if ok else " k=1 DIFFERS from decode"
        print(
            f"| {batch} x {steps} x {num_tags} | {ms['decode']:.2f} | {cells} |{flag}", flush=True
        )
    print(f"\nLoad average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
