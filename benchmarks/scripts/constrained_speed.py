"""Time the CRF's operations with per-token constraints against the same operations without.

The shapes are `crf_speed.py`'s, the CRF has BIO constraints over `(K - 1) / 2` labels, and
the constraints are what presets give: in each row, entities of one to three tokens forced
(`TagSets.entity`) until about a fifth of its tokens are fixed, and a few tokens blocked
(`TagSets.outside`). Both variants run in one process, interleaved, alternating which goes
first, each sample the same number of calls; the table gives the medians and their ratio. The
clock is the process's CPU time, not the wall clock: on a shared machine the wall clock counts
the time other jobs hold the core (1 torch thread, so the two agree on an idle one). Every
constrained path is checked to satisfy its constraints.

Usage: python benchmarks/scripts/constrained_speed.py [--repeats N] [--threads N]
"""

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from spacy_bilstm_crf import CRF, allowed_transitions, tag_names
from spacy_bilstm_crf.tag_sets import TagSets

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from crf_speed import SHAPES, make_inputs  # noqa: E402
from speed import cpu_model  # noqa: E402

FIXED_SHARE = 0.2
SAMPLE_S = 0.02


def preset_candidates(mask: torch.Tensor, labels: list[str], seed: int) -> torch.Tensor:
    """Tag sets `(B, T, K)`: forced entities over about `FIXED_SHARE` of each row's tokens,
    and one blocked token in ten."""
    rng = random.Random(seed)
    rows = []
    for length in mask.sum(1).tolist():
        sets = TagSets(labels, mask.shape[1], "BIO")
        fixed = 0
        while fixed < FIXED_SHARE * length:
            start = rng.randrange(length)
            end = min(length, start + rng.randint(1, 3))
            if sets.allowed[start:end].all():
                sets.entity(start, end, rng.choice(labels))
            fixed += end - start
        for position in rng.sample(range(length), length // 10):
            if sets.allowed[position].all():
                sets.outside(position, position + 1)
        rows.append(torch.from_numpy(sets.allowed))
    return torch.stack(rows)


def time_pair(calls: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    """CPU milliseconds per call of each variant, `repeats` samples each of the same number of
    calls (at least `SAMPLE_S` of the first variant), alternating which goes first."""
    for call in calls.values():
        call()
    first = next(iter(calls.values()))
    start = time.process_time()
    first()
    count = max(1, int(SAMPLE_S / max(time.process_time() - start, 1e-6)) + 1)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % 2 :] + names[: r % 2]:
            start = time.process_time()
            for _ in range(count):
                calls[name]()
            times[name].append(1e3 * (time.process_time() - start) / count)
    return times


def operations(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor) -> dict[str, Callable]:
    """The timed operations, each taking the candidates (or None)."""
    return {
        "decode": lambda given: CRF.to_lists(crf.decode(emissions, mask, given)[0], mask),
        "nbest k=5": lambda given: crf.nbest(emissions, mask, k=5, candidates=given),
        "marginals": lambda given: crf.marginals(emissions, mask, given),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed samples per cell")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Command: python {' '.join(sys.argv)}")
    print(f"Date: {datetime.date.today()}; load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print(
        f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}"
    )
    print(f"Median CPU ms per call over {args.repeats} interleaved samples; float32; BIO.\n")
    print("| B x T x K | op | unconstrained ms | constrained ms | ratio |")
    print("|---|---|---:|---:|---:|")
    all_ok = True
    for index, (batch, steps, num_tags) in enumerate(SHAPES):
        inputs = make_inputs(batch, steps, num_tags, seed=index)
        emissions, mask = inputs["emissions"], inputs["mask"]
        labels = [f"L{i}" for i in range((num_tags - 1) // 2)]
        torch.manual_seed(index)
        crf = CRF(num_tags, allowed_transitions(tag_names(labels), "BIO"))
        with torch.no_grad():
            for param in crf.parameters():
                param.normal_(0.0, 0.5)
        candidates = preset_candidates(mask, labels, index)
        paths, _ = crf.decode(emissions, mask, candidates)
        taken = candidates.gather(2, paths.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        all_ok &= bool(taken[mask].all())
        for op, call in operations(crf, emissions, mask).items():
            calls = {"plain": partial(call, None), "constrained": partial(call, candidates)}
            with torch.no_grad():
                times = time_pair(calls, args.repeats)
            ms = {name: statistics.median(values) for name, values in times.items()}
            print(
                f"| {batch} x {steps} x {num_tags} | {op} | {ms['plain']:.2f} | "
                f"{ms['constrained']:.2f} | {ms['constrained'] / ms['plain']:.2f}x |",
                flush=True,
            )
    print(f"\nLoad average (1 min) at end: {os.getloadavg()[0]:.2f}")
    if not all_ok:
        print("A constrained path broke its constraints.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
