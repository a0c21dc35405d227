"""Time this package's CRF against pytorch-crf 0.7.2 on CPU, and check that both agree.

Both CRFs get the same parameters and the same inputs in one process, and are timed
interleaved (alternating which goes first) so that machine noise hits both alike. For each
shape `B x T x K` it times the negative log-likelihood forward plus `.sum().backward()`, and
Viterbi decoding down to Python lists (what pytorch-crf returns). It prints a Markdown table
of medians and exits non-zero if the two disagree (NLL beyond 1e-4 relative, or any decoded
path) or if our gradients are off by more than 1e-4 of their largest entry from float64 ones,
never because of speed. Timings mean little while other processes keep the cores busy (each
parallel operation then waits for a descheduled thread), hence the load averages it prints.

Usage: python benchmarks/crf_speed.py [--repeats N] [--threads N]
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchcrf

from spacy_bilstm_crf import CRF, allowed_transitions, tag_names

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402

SHAPES = [(64, 40, 9), (64, 40, 37), (32, 256, 9), (256, 20, 9)]
NLL_RTOL = 1e-4
GRAD_RTOL = 1e-4
MIN_SAMPLE_S = 0.005


def make_inputs(batch: int, steps: int, num_tags: int, seed: int) -> dict[str, torch.Tensor]:
    """Emissions, gold tags and a mask with lengths in [T//2, T], the first row full length."""
    gen = torch.Generator().manual_seed(seed)
    emissions = torch.randn(batch, steps, num_tags, generator=gen) * 2.0  # shape: (B, T, K)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=gen)  # shape: (B,)
    lengths[0] = steps
    mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)  # shape: (B, T)
    tags = torch.randint(0, num_tags, (batch, steps), generator=gen)  # shape: (B, T)
    return {"emissions": emissions, "tags": tags, "mask": mask}


def make_crfs(num_tags: int, seed: int) -> tuple[CRF, torchcrf.CRF, CRF]:
    """Ours unconstrained, pytorch-crf with the same parameters, and ours with BIO constraints."""
    torch.manual_seed(seed)
    ours = CRF(num_tags)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.5)
    theirs = torchcrf.CRF(num_tags, batch_first=True)
    theirs.load_state_dict({name: p.detach().clone() for name, p in ours.named_parameters()})
    labels = [f"L{i}" for i in range((num_tags - 1) // 2)]
    bio = CRF(num_tags, allowed_transitions(tag_names(labels), "BIO"))
    bio.load_state_dict({**bio.state_dict(), **dict(ours.named_parameters())})
    return ours, theirs, bio


def nll_step(crf: torch.nn.Module, inputs: dict[str, torch.Tensor], theirs: bool) -> tuple:
    """A closure running NLL forward + backward once, grads cleared before (untimed)."""
    emissions = inputs["emissions"].clone().requires_grad_(True)
    tags, mask = inputs["tags"], inputs["mask"]

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if theirs:
            loss = -crf(emissions, tags, mask, reduction="none")
        else:
            loss = crf.nll(emissions, tags, mask)
        loss.sum().backward()
        grads = {name: p.grad for name, p in crf.named_parameters()}
        return loss.detach(), {"emissions": emissions.grad, **grads}

    def reset() -> None:
        emissions.grad = None
        crf.zero_grad(set_to_none=True)

    return run, reset


def decode_step(crf: torch.nn.Module, inputs: dict[str, torch.Tensor], theirs: bool) -> tuple:
    """A closure decoding to ragged Python lists."""
    emissions, mask = inputs["emissions"], inputs["mask"]

    def run() -> list[list[int]]:
        with torch.no_grad():
            if theirs:
                return crf.decode(emissions, mask)
            paths, _ = crf.decode(emissions, mask)
            return CRF.to_lists(paths, mask)

    return run, lambda: None


def run_once(run: Callable, reset: Callable) -> object:
    """One call's result, grads cleared before."""
    reset()
    return run()


def calibrate(run: Callable, reset: Callable) -> int:
    """How many calls make one timed sample last at least `MIN_SAMPLE_S`."""
    reset()
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    return max(1, int(MIN_SAMPLE_S / max(once, 1e-6)) + 1)


def sample(run: Callable, reset: Callable, calls: int) -> float:
    """Mean seconds per call over `calls` calls, resets excluded from the clock."""
    total = 0.0
    for _ in range(calls):
        reset()
        start = time.perf_counter()
        run()
        total += time.perf_counter() - start
    return total / calls


def time_interleaved(steps: dict[str, tuple[Callable, Callable]], repeats: int) -> dict:
    """Median milliseconds per call of each step, sampled in rotating order."""
    for run, reset in steps.values():
        for _ in range(3):
            reset()
            run()
    calls = {name: calibrate(*step) for name, step in steps.items()}
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(sample(*steps[name], calls[name]))
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def check_nll(ours: tuple, theirs: tuple, exact: tuple) -> tuple[bool, str]:
    """NLL within `NLL_RTOL` of pytorch-crf, gradients within `GRAD_RTOL` of float64 ones.

    Gradients are compared with pytorch-crf run in float64 (`exact`), not in float32: over
    long sequences its float32 autograd drifts further from the truth than the tolerance.
    """
    loss_ours, grads_ours = ours
    loss_theirs, _ = theirs
    nll_err = float(((loss_ours - loss_theirs).abs() / loss_theirs.abs()).max())
    grad_err = 0.0
    for name, b in exact[1].items():
        a = grads_ours[name].double()
        grad_err = max(grad_err, float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)))
    ok = nll_err <= NLL_RTOL and grad_err <= GRAD_RTOL
    text = f"NLL rel {nll_err:.1e}, grad rel {grad_err:.1e} (vs float64)"
    return ok, f"{'ok' if ok else 'FAIL'}: {text}"


def check_paths(ours: list[list[int]], theirs: list[list[int]], exact: object) -> tuple[bool, str]:
    """Paths identical to pytorch-crf's in float32 (`exact`, its float64 run, is not needed)."""
    same = sum(a == b for a, b in zip(ours, theirs))
    ok = same == len(theirs) and len(ours) == len(theirs)
    return ok, f"{'ok' if ok else 'FAIL'}: {same}/{len(theirs)} paths identical"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed samples per cell")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"Command: python {' '.join(sys.argv)}")
    print(f"Load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores visible); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"pytorch-crf {torchcrf.__version__}; Python {platform.python_version()}"
    )
    print(
        f"Median ms per call over {args.repeats} interleaved samples; float32; "
        "lengths uniform in [T/2, T]; NLL = forward + backward; decode = to Python lists."
    )
    print()
    print("| B x T x K | op | pytorch-crf ms | ours ms | speed-up | ours, BIO ms | agreement |")
    print("|---|---|---:|---:|---:|---:|---|")
    all_ok = True
    for index, (batch, steps, num_tags) in enumerate(SHAPES):
        inputs = make_inputs(batch, steps, num_tags, seed=index)
        ours, theirs, bio = make_crfs(num_tags, seed=index)
        bio_inputs = dict(inputs)
        with torch.no_grad():
            gold, _ = bio.decode(torch.randn(batch, steps, num_tags), inputs["mask"])
        bio_inputs["tags"] = gold.clamp(min=0)
        wide_inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        shape = f"{batch} x {steps} x {num_tags}"
        for op, make_step, check in (
            ("NLL fwd+bwd", nll_step, check_nll),
            ("decode", decode_step, check_paths),
        ):
            timed = {
                "theirs": make_step(theirs, inputs, theirs=True),
                "ours": make_step(ours, inputs, theirs=False),
                "bio": make_step(bio, bio_inputs, theirs=False),
            }
            reference = make_step(copy.deepcopy(theirs).double(), wide_inputs, theirs=True)
            results = [run_once(*step) for step in (timed["ours"], timed["theirs"], reference)]
            ok, agreement = check(*results)
            all_ok &= ok
            ms = time_interleaved(timed, args.repeats)
            speedup = ms["theirs"] / ms["ours"]
            print(
                f"| {shape} | {op} | {ms['theirs']:.2f} | {ms['ours']:.2f} | "
                f"{speedup:.1f}x | {ms['bio']:.2f} | {agreement} |",
                flush=True,
            )
    print(f"\nLoad average (1 min) at end: {os.getloadavg()[0]:.2f}")
    if not all_ok:
        print("Agreement checks FAILED.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
