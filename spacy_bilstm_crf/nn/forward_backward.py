"""The linear-chain CRF's numerical passes: log partition, posteriors and their gradients.

The log partition is computed in probability space, one `(K, K) @ (K, B)` product per step
with each step renormalised, and its gradient (the marginals minus the observed counts) comes
from a hand-written forward-backward pass instead of autograd through `T` steps. When a
gradient is wanted, the backward recursion runs in the same loop over the steps in reverse, so
that one block-diagonal product per step serves both. A row whose renormaliser gets so small
that underflow could change the result is recomputed in log space (`reference_log_z`,
`reference_grads`), so the fast path never trades exactness for speed.

On CPU, at the sizes of NER batches, time goes to the overhead of each torch operation rather
than to arithmetic, so the loops are kept to a few operations per step on preallocated buffers.
Shapes: `B` sequences, `T` time steps, `K` tags.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn


def difference(log_z: Tensor, log_z_observed: Tensor) -> Tensor:
    """`log_z - log_z_observed`, and `inf` where the observation has no allowed path."""
    return torch.where(log_z_observed > float("-inf"), log_z - log_z_observed, float("inf"))


def path_score(
    emissions: Tensor, tags: Tensor, mask: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> Tensor:
    """Score of the given paths, vectorised over batch and time."""
    zero = emissions.new_zeros(())
    if emissions.shape[1] == 0:
        return emissions.new_zeros(emissions.shape[0])
    tags = tags.masked_fill(~mask, 0)  # shape: (B, T)
    lengths = mask.sum(1)  # shape: (B,)
    nonempty = lengths > 0
    emitted = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # shape: (B, T)
    total = torch.where(mask, emitted, zero).sum(1)
    moves = trans[tags[:, :-1], tags[:, 1:]]  # shape: (B, T - 1)
    total = total + torch.where(mask[:, 1:], moves, zero).sum(1)
    last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # shape: (B,)
    ends = start[tags[:, 0]] + end[last]  # shape: (B,)
    return total + torch.where(nonempty, ends, zero)


class Forward(NamedTuple):
    """What the scaled recursions leave for the gradient: time-major, tags before batch.

    Time runs over the `T` steps and one more, which every row spends in STOP: an extra tag
    that a row moves to (through the end score) once it has no more tokens, and then keeps. So
    no step of the recursions needs the mask, and the end scores are one more column of moves.
    """

    log_z: Tensor  # shape: (B,)
    moves: Tensor  # shape: (K + 1, K + 1), exp(transitions - max), exp(end - max) to STOP
    starts: Tensor  # shape: (K + 1,), exp(start - max), and 1 for STOP (empty rows)
    alphas: Tensor  # shape: (T + 1, K + 1, B), forward messages, each step summing to one
    betas: Tensor | None  # shape: (T + 1, K + 1, B), backward messages times probs, same
    bad: Tensor  # shape: (B,), rows to recompute in log space


def _shifted_exp(scores: Tensor) -> tuple[Tensor, Tensor]:
    """`exp(scores - max)` and the max (0 where every score is `-inf`)."""
    top = scores.max().nan_to_num(0.0, 0.0, 0.0)
    return torch.exp(scores - top), top


def masked_exp(scores: Tensor, keep: Tensor) -> Tensor:
    """`exp(scores) * keep` in place. Scores of `-inf` (tags that per-token constraints rule
    out) are zeroed after the exp, not before: exp(-inf) costs ten times a finite exp."""
    ruled_out = torch.isneginf(scores)
    if bool(ruled_out.any()):
        keep = (~ruled_out).to(scores.dtype).mul_(keep)
        scores.masked_fill_(ruled_out, 0.0)
    return scores.exp_().mul_(keep)


def scaled_forward(
    emissions: Tensor,
    trans: Tensor,
    start: Tensor,
    end: Tensor,
    mask: Tensor,
    backward: bool = False,
) -> Forward:
    """Forward algorithm in probability space with per-step renormalisation.

    With `backward`, the backward recursion runs in the same loop over the steps in reverse
    order: one block-diagonal matrix product per step serves both.
    """
    batch, steps, num_tags = emissions.shape
    heads, size, stop = (2 if backward else 1), num_tags + 1, num_tags
    tiny = torch.finfo(emissions.dtype).tiny ** 0.5
    step_mask = mask.t().unsqueeze(1)  # shape: (T, 1, B)
    probs = emissions.new_empty(steps + 1, heads, size, batch)  # shape: (T + 1, H, K + 1, B)
    scores = probs[:steps, 0, :num_tags]  # shape: (T, K, B)
    torch.where(step_mask, emissions.permute(1, 2, 0), emissions.new_zeros(()), out=scores)
    shifts = scores.amax(1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)  # shape: (T, 1, B)
    keep = step_mask.to(probs.dtype)  # shape: (T, 1, B); a bool factor takes a slow path
    masked_exp(scores.sub_(shifts), keep)  # exp(-inf) takes a slow path too: mask after
    moves = emissions.new_zeros(size, size)  # shape: (K + 1, K + 1)
    moves[:num_tags, :num_tags], move_shift = _shifted_exp(trans)
    moves[:num_tags, stop], end_shift = _shifted_exp(end)
    moves[stop, stop] = 1.0
    only_stop = moves[stop]  # shape: (K + 1,), one-hot
    probs[:steps, 0, stop] = 1.0 - keep[:, 0]
    probs[steps, 0] = only_stop.unsqueeze(1)
    starts = emissions.new_ones(size)  # shape: (K + 1,)
    starts[:num_tags], start_shift = _shifted_exp(start)
    first = torch.cat([starts, only_stop])  # the backward recursion starts in STOP
    step_moves = moves.t().contiguous()  # shape: (H (K + 1), H (K + 1)) once stacked below
    reverse = torch.arange(steps, -1, -1, device=mask.device)  # shape: (T + 1,)
    if backward:
        probs[:, 1] = probs[:, 0].index_select(0, reverse)
        step_moves = torch.block_diag(step_moves, moves)
    messages = torch.empty_like(probs)  # shape: (T + 1, H, K + 1, B)
    scales = probs.new_empty(steps + 1, heads, 1, batch)  # shape: (T + 1, H, 1, B)
    prob_steps = probs.view(steps + 1, heads * size, batch).unbind(0)
    flat_steps = messages.view(steps + 1, heads * size, batch).unbind(0)
    head_steps, scale_steps = messages.unbind(0), scales.unbind(0)
    torch.mul(first[: heads * size].unsqueeze(1), prob_steps[0], out=flat_steps[0])
    for t in range(steps + 1):
        if t:
            torch.mm(step_moves, flat_steps[t - 1], out=flat_steps[t])
            flat_steps[t].mul_(prob_steps[t])
        torch.sum(head_steps[t], 1, keepdim=True, out=scale_steps[t])
        head_steps[t].div_(scale_steps[t])
    lengths = mask.sum(1)  # shape: (B,)
    nonempty = lengths > 0
    logs = scales[:, 0].log().sum((0, 1)) + shifts.sum((0, 1))  # shape: (B,)
    log_z = logs + start_shift + end_shift + (lengths - 1) * move_shift
    bad = ~((scales >= tiny).flatten(0, 2).all(0) & (log_z.abs() < float("inf")))
    log_z = torch.where(nonempty, log_z, log_z.new_zeros(()))
    betas = messages[:, 1].index_select(0, reverse) if backward else None
    return Forward(log_z, moves, starts, messages[:, 0], betas, bad & nonempty)


class Posteriors(NamedTuple):
    """Token posteriors and the factors of the pairwise ones, time-major, tags before batch."""

    marginals: Tensor  # shape: (T, K, B), zero where masked or for `bad` rows
    alphas: Tensor  # shape: (T + 1, K + 1, B), forward messages, inf and nan zeroed
    betas: Tensor  # shape: (T + 1, K + 1, B), backward messages over each step's total
    bad: Tensor  # shape: (B,), rows whose scaled values may have underflowed


def scaled_posteriors(state: Forward, weights: Tensor | None = None) -> Posteriors:
    """Marginals from the messages, flagging rows where either pass underflowed.

    Marginals and the pairwise factors are multiplied by `weights` `(B,)` when given.
    At step t the pairs alpha_{t-1}(i) moves(i, j) betas_t(j) sum to the step's total, so
    the marginal of tag j at step t is (moves^T alpha_{t-1})(j) betas_t(j) over that total.
    """
    if state.betas is None:
        raise ValueError("Posteriors need the backward recursion: use backward=True.")
    tiny = torch.finfo(state.alphas.dtype).tiny ** 0.5
    steps, num_tags = state.alphas.shape[0] - 1, state.alphas.shape[1] - 1
    # Only flagged rows can hold inf or nan: zero those so that they add nothing to the sums.
    flagged = bool(state.bad.any())
    alphas = state.alphas.nan_to_num(0.0, 0.0, 0.0) if flagged else state.alphas
    incoming = torch.empty_like(alphas)  # shape: (T + 1, K + 1, B)
    incoming[0] = state.starts.unsqueeze(1)
    torch.matmul(state.moves.t(), alphas[:-1], out=incoming[1:])
    totals = (incoming * state.betas).sum(1, keepdim=True)  # shape: (T + 1, 1, B)
    bad = state.bad | ~(totals >= tiny).flatten(0, 1).all(0)
    scale = totals.reciprocal() if weights is None else weights / totals
    scale = torch.where(bad, totals.new_zeros(()), scale)  # shape: (T + 1, 1, B)
    betas = state.betas * scale  # shape: (T + 1, K + 1, B)
    if flagged:
        betas.nan_to_num_(0.0, 0.0, 0.0)
    marginals = incoming[:steps, :num_tags] * betas[:steps, :num_tags]  # shape: (T, K, B)
    return Posteriors(marginals, alphas, betas, bad)


class LogPartition(torch.autograd.Function):
    """log Z per sequence, with the gradient from forward-backward marginals."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        emissions: Tensor,
        trans: Tensor,
        start: Tensor,
        end: Tensor,
        mask: Tensor,
    ) -> Tensor:
        backward = any(ctx.needs_input_grad[:4])
        log_z, state = _log_z(emissions, trans, start, end, mask, backward)
        ctx.save_for_backward(emissions, trans, start, end, mask)
        ctx.state = state
        return log_z

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_log_z: Tensor
    ) -> tuple[Tensor | None, ...]:
        emissions, trans, start, end, mask = ctx.saved_tensors
        return *_log_z_grads(ctx.state, emissions, trans, start, end, mask, grad_log_z), None


class GoldNll(torch.autograd.Function):
    """log Z minus the score of fully observed tags per sequence (`inf` for a forbidden path).

    The gradient is written out as for `LogPartition`, less the counts of the scores the gold
    path takes: one autograd node for the whole loss instead of one per operation.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        emissions: Tensor,
        trans: Tensor,
        start: Tensor,
        end: Tensor,
        mask: Tensor,
        tags: Tensor,
    ) -> Tensor:
        backward = any(ctx.needs_input_grad[:4])
        log_z, state = _log_z(emissions, trans, start, end, mask, backward)
        nll = difference(log_z, path_score(emissions, tags, mask, trans, start, end))
        ctx.save_for_backward(emissions, trans, start, end, mask, tags, nll)
        ctx.state = state
        return nll

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_nll: Tensor
    ) -> tuple[Tensor | None, ...]:
        emissions, trans, start, end, mask, tags, nll = ctx.saved_tensors
        weights = torch.where(torch.isinf(nll), grad_nll.new_zeros(()), grad_nll)  # shape: (B,)
        grads = _log_z_grads(ctx.state, emissions, trans, start, end, mask, weights, tags)
        return *grads, None, None


def _log_z_grads(
    state: Forward,
    emissions: Tensor,
    trans: Tensor,
    start: Tensor,
    end: Tensor,
    mask: Tensor,
    weights: Tensor,
    gold: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of `sum(weights * log Z)` for emissions, transitions, start and end scores.

    With `gold` tags, those of `sum(weights * (log Z - gold path score))` instead.
    """
    steps, num_tags = emissions.shape[1:]
    if steps == 0:
        zeros = [torch.zeros_like(x) for x in (emissions, trans, start, end)]
        return zeros[0], zeros[1], zeros[2], zeros[3]
    post = scaled_posteriors(state, weights)
    # Batch-first and contiguous, as autograd would copy it to anyway (a transposing copy
    # costs less than an elementwise product writing through the transposition).
    d_emissions = post.marginals.permute(2, 0, 1).contiguous()  # shape: (B, T, K)
    # Pairwise marginals summed over batch and time, the moves to STOP (end scores) too.
    left, right = post.alphas[:-1], post.betas[1:].transpose(1, 2)
    pairs = state.moves * torch.bmm(left, right).sum(0)  # shape: (K + 1, K + 1)
    if bool(post.bad.any()):
        rows = post.bad.nonzero().squeeze(1)
        grads = reference_grads(emissions[rows], trans, start, end, mask[rows], weights[rows])
        d_emissions[rows] = grads[0]
        pairs[:num_tags, :num_tags] += grads[1]
        pairs[:num_tags, num_tags] += grads[3]
    if gold is not None:
        skip = ~mask
        taken = torch.where(mask, -weights.unsqueeze(1), weights.new_zeros(()))  # shape: (B, T)
        d_emissions.scatter_add_(2, gold.masked_fill(skip, 0).unsqueeze(-1), taken.unsqueeze(-1))
        path = nn.functional.pad(gold.masked_fill(skip, num_tags), (0, 1), value=num_tags)
        moves = path[:, :-1] * (num_tags + 1) + path[:, 1:]  # shape: (B, T), into STOP at the end
        pairs.view(-1).index_add_(0, moves.flatten(), taken.flatten())
    # A start score adds to the same paths as the emission score of its tag at step 0.
    d_start = d_emissions[:, 0].sum(0)
    return d_emissions, pairs[:num_tags, :num_tags], d_start, pairs[:num_tags, num_tags]


def _log_z(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor, backward: bool
) -> tuple[Tensor, Forward]:
    """log Z `(B,)` from the scaled pass, rows flagged there recomputed in log space."""
    state = scaled_forward(emissions, trans, start, end, mask, backward)
    log_z = state.log_z
    if bool(state.bad.any()):
        rows = state.bad.nonzero().squeeze(1)
        log_z = log_z.clone()
        wide = (x.double() for x in (emissions[rows], trans, start, end))
        log_z[rows] = reference_log_z(*wide, mask[rows]).to(log_z.dtype)
    return log_z, state


def log_partition(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor
) -> Tensor:
    """log Z `(B,)`: through the autograd function only when a gradient may be asked for."""
    if torch.is_grad_enabled():
        return LogPartition.apply(emissions, trans, start, end, mask)
    return _log_z(emissions, trans, start, end, mask, backward=False)[0]


def gold_nll(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor, tags: Tensor
) -> Tensor:
    """`log Z - score(tags)` `(B,)`, `inf` where the path is forbidden; like `log_partition`."""
    if torch.is_grad_enabled():
        return GoldNll.apply(emissions, trans, start, end, mask, tags)
    log_z = _log_z(emissions, trans, start, end, mask, backward=False)[0]
    return difference(log_z, path_score(emissions, tags, mask, trans, start, end))


def reference_log_z(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor
) -> Tensor:
    """Log-space forward algorithm: slow but immune to underflow. Shape `(B,)`."""
    alpha = start + emissions[:, 0]  # shape: (B, K)
    for t in range(1, emissions.shape[1]):
        step = _logsumexp(alpha.unsqueeze(2) + trans, dim=1) + emissions[:, t]
        alpha = torch.where(mask[:, t : t + 1], step, alpha)
    log_z = _logsumexp(alpha + end, dim=1)
    return torch.where(mask[:, 0], log_z, log_z.new_zeros(()))


def _logsumexp(scores: Tensor, dim: int) -> Tensor:
    """`logsumexp` whose gradient stays finite (zero) where every score is `-inf`."""
    finite = torch.isfinite(scores)
    safe = torch.where(finite, scores, torch.finfo(scores.dtype).min)
    out = torch.logsumexp(safe, dim)
    return torch.where(finite.any(dim), out, float("-inf"))


def reference_grads(
    emissions: Tensor,
    trans: Tensor,
    start: Tensor,
    end: Tensor,
    mask: Tensor,
    grad_log_z: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the log-space log Z by autograd (marginals when `grad_log_z` is None).

    Computed in float64: at float32 precision, log-scores in the millions (long sequences with
    large emissions) would leave the softmax weights of the backward pass off by a factor.
    """
    dtype = emissions.dtype
    with torch.inference_mode(False), torch.enable_grad():
        inputs = [x.detach().double().requires_grad_(True) for x in (emissions, trans, start, end)]
        log_z = reference_log_z(*inputs, mask.clone())
        weights = torch.ones_like(log_z) if grad_log_z is None else grad_log_z.detach().double()
        grads = torch.autograd.grad(log_z, inputs, weights)
    return tuple(g.nan_to_num(0.0).to(dtype) for g in grads)  # type: ignore[return-value]
