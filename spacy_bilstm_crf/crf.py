"""A linear-chain CRF in plain PyTorch: exact, batched, constrained and partial-label aware.

Shapes follow one convention: `B` sequences, `T` time steps, `K` tags. Inputs are batch-first,
masks are bool and left-aligned, and rows may have length zero (their log partition is 0 and
their best path is empty).

The log partition is computed in probability space, one `(B, K) @ (K, K)` product per step with
each step renormalised, and its gradient (the marginals minus the observed counts) comes from a
hand-written forward-backward pass instead of autograd through `T` steps. A row whose
renormaliser gets so small that underflow could change the result is recomputed in log space,
so the fast path never trades exactness for speed.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .tags import Constraints

BoolMatrix = Tensor | Sequence[Sequence[bool]]


class CRF(nn.Module):
    """Linear-chain CRF over `num_tags` tags with optional hard constraints.

    Forbidden moves (from `allowed`, e.g. `allowed_transitions(tags, "BIO")`) get probability
    exactly zero in training, decoding and marginals: they are masked to `-inf`, not penalised.
    """

    def __init__(self, num_tags: int, allowed: Constraints | BoolMatrix | None = None) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"A CRF needs at least one tag, got num_tags={num_tags}.")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        nn.init.uniform_(self.transitions, -0.1, 0.1)
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        moves, start, end = _constraint_tensors(num_tags, allowed)
        self.register_buffer("allowed", moves)
        self.register_buffer("allowed_start", start)
        self.register_buffer("allowed_end", end)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Same as `nll`: the per-sequence negative log-likelihood."""
        return self.nll(emissions, tags, mask)

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        candidates: Tensor | None = None,
    ) -> Tensor:
        """Negative log-likelihood of `tags` per sequence, shape `(B,)`.

        A tag of `-1` means unknown: the likelihood sums over every tag there, or over the tags
        that `candidates` (bool `(B, T, K)`) allows. Fully observed rows use the gold path score
        directly; infeasible gold paths (a forbidden move) give `inf`.
        """
        mask = self._check(emissions, mask)
        tags = self._check_tags(tags, mask)
        trans, start, end = self._scores(emissions.dtype)
        log_z = _LogPartition.apply(emissions, trans, start, end, mask)
        unknown = (tags == -1) & mask  # shape: (B, T)
        if not bool(unknown.any()):
            return _difference(log_z, _path_score(emissions, tags, mask, trans, start, end))
        known = tags.clamp(min=0)
        observed = nn.functional.one_hot(known, self.num_tags).bool()  # shape: (B, T, K)
        free = unknown.unsqueeze(-1)
        if candidates is not None:
            if candidates.shape != emissions.shape or candidates.dtype != torch.bool:
                raise ValueError(
                    f"candidates must be a bool tensor of shape {tuple(emissions.shape)}, "
                    f"got {candidates.dtype} {tuple(candidates.shape)}."
                )
            free = free & candidates
        allowed_tags = torch.where(unknown.unsqueeze(-1), free, observed)
        clamped = emissions.masked_fill(~allowed_tags, float("-inf"))
        log_z_observed = _LogPartition.apply(clamped, trans, start, end, mask)
        return _difference(log_z, log_z_observed)

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log of the sum of exp-scores over all allowed paths, shape `(B,)`."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores(emissions.dtype)
        return _LogPartition.apply(emissions, trans, start, end, mask)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unnormalised score of fully known `tags` per sequence, shape `(B,)`."""
        mask = self._check(emissions, mask)
        tags = self._check_tags(tags, mask)
        if bool(((tags == -1) & mask).any()):
            raise ValueError("score() needs every tag known; use nll() for partial labels.")
        return _path_score(emissions, tags, mask, *self._scores(emissions.dtype))

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Posterior probability of each tag at each position, shape `(B, T, K)`.

        Rows sum to one at unmasked positions and are zero elsewhere.
        """
        mask = self._check(emissions, mask)
        trans, start, end = (s.detach() for s in self._scores(emissions.dtype))
        emissions = emissions.detach()
        state = _scaled_forward(emissions, trans, start, end, mask)
        post = _scaled_posteriors(state, mask)
        posteriors = post.marginals
        if bool(post.bad.any()):
            rows = post.bad.nonzero().squeeze(1)
            grads = _reference_grads(emissions[rows], trans, start, end, mask[rows], None)
            posteriors[:, rows] = grads[0].transpose(0, 1)
        return posteriors.transpose(0, 1)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Viterbi: the best path per sequence and its score.

        Returns `paths` `(B, T)` long, padded with `-1` where masked, and `scores` `(B,)`.
        Use `to_lists` for ragged Python lists.
        """
        mask = self._check(emissions, mask)
        return _viterbi(emissions.detach(), mask, *self._scores(emissions.dtype))

    @staticmethod
    def to_lists(paths: Tensor, mask: Tensor) -> list[list[int]]:
        """Ragged lists of tag ids from padded `paths` and their mask."""
        lengths = mask.sum(1).tolist()
        return [row[:n] for row, n in zip(paths.tolist(), lengths)]

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Transition, start and end scores with forbidden moves at `-inf`."""
        neg_inf = float("-inf")
        trans = self.transitions.to(dtype).masked_fill(~self.allowed, neg_inf)
        start = self.start_transitions.to(dtype).masked_fill(~self.allowed_start, neg_inf)
        end = self.end_transitions.to(dtype).masked_fill(~self.allowed_end, neg_inf)
        return trans, start, end

    def _check(self, emissions: Tensor, mask: Tensor | None) -> Tensor:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(
                f"emissions must have shape (batch, time, {self.num_tags}), "
                f"got {tuple(emissions.shape)}."
            )
        if not emissions.is_floating_point():
            raise TypeError(f"emissions must be floating point, got {emissions.dtype}.")
        if mask is None:
            return torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        if mask.shape != emissions.shape[:2]:
            raise ValueError(
                f"mask must have shape {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}."
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}.")
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("mask must be left-aligned: no True after a False in a row.")
        return mask

    def _check_tags(self, tags: Tensor, mask: Tensor) -> Tensor:
        if tags.shape != mask.shape:
            raise ValueError(f"tags must have shape {tuple(mask.shape)}, got {tuple(tags.shape)}.")
        if tags.dtype != torch.long:
            raise TypeError(f"tags must be a long tensor, got {tags.dtype}.")
        outside = mask & ((tags < -1) | (tags >= self.num_tags))
        if bool(outside.any()):
            bad = int(tags[outside][0])
            raise ValueError(f"tag id {bad} out of range: use 0..{self.num_tags - 1}, or -1.")
        return tags


def _constraint_tensors(
    num_tags: int, allowed: Constraints | BoolMatrix | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Bool tensors for allowed moves, starts and ends; everything allowed by default."""
    if allowed is None:
        moves: BoolMatrix = torch.ones(num_tags, num_tags, dtype=torch.bool)
        start: Tensor | Sequence[bool] = [True] * num_tags
        end: Tensor | Sequence[bool] = [True] * num_tags
    elif isinstance(allowed, Constraints):
        moves, start, end = allowed
    else:
        moves, start, end = allowed, [True] * num_tags, [True] * num_tags
    moves_t = torch.as_tensor(moves, dtype=torch.bool)
    start_t = torch.as_tensor(start, dtype=torch.bool)
    end_t = torch.as_tensor(end, dtype=torch.bool)
    shapes = (moves_t.shape, start_t.shape, end_t.shape)
    if shapes != ((num_tags, num_tags), (num_tags,), (num_tags,)):
        raise ValueError(f"Constraints must be ({num_tags}, {num_tags}) and ({num_tags},) bools.")
    if not bool(start_t.any()) or not bool(end_t.any()):
        raise ValueError("Constraints allow no start or no end tag: no path would be possible.")
    return moves_t, start_t, end_t


def _difference(log_z: Tensor, log_z_observed: Tensor) -> Tensor:
    """`log_z - log_z_observed`, and `inf` where the observation has no allowed path."""
    return torch.where(log_z_observed > float("-inf"), log_z - log_z_observed, float("inf"))


def _path_score(
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


class _Forward(NamedTuple):
    """What the scaled forward pass leaves for the backward pass, time-major."""

    log_z: Tensor  # shape: (B,)
    probs: Tensor  # shape: (T, B, K), exp(emissions - their max per step)
    moves: Tensor  # shape: (K, K), exp(transitions - their max)
    ends: Tensor  # shape: (K,), exp(end - its max)
    alphas: Tensor  # shape: (T, B, K), each step normalised to sum to one
    scales: Tensor  # shape: (T, B, 1), the normaliser of each step
    bad: Tensor  # shape: (B,), rows to recompute in log space


def _shifted_exp(scores: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """`exp(scores - max)` and the max (0 where every score is `-inf`)."""
    top = scores.max() if dim is None else scores.amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.exp(scores - top), top


def _scaled_forward(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor
) -> _Forward:
    """Forward algorithm in probability space with per-step renormalisation."""
    batch, steps, _ = emissions.shape
    tiny = torch.finfo(emissions.dtype).tiny ** 0.5
    time_mask = mask.t()  # shape: (T, B)
    emissions = emissions.transpose(0, 1).masked_fill(~time_mask.unsqueeze(-1), 0.0)
    probs, shifts = _shifted_exp(emissions, dim=-1)  # shape: (T, B, K), (T, B, 1)
    moves, move_shift = _shifted_exp(trans)
    starts, start_shift = _shifted_exp(start)
    ends, end_shift = _shifted_exp(end)
    alphas = torch.empty_like(probs)
    scales = probs.new_empty(steps, batch, 1)
    if steps == 0:
        nothing = mask.new_zeros(batch)
        return _Forward(probs.new_zeros(batch), probs, moves, ends, alphas, scales, nothing)
    torch.mul(starts, probs[0], out=alphas[0])
    torch.sum(alphas[0], -1, keepdim=True, out=scales[0])
    alphas[0].div_(scales[0])
    alpha_steps, prob_steps, scale_steps = alphas.unbind(0), probs.unbind(0), scales.unbind(0)
    for t in range(1, steps):
        alpha = alpha_steps[t]
        torch.mm(alpha_steps[t - 1], moves, out=alpha)
        alpha.mul_(prob_steps[t])
        torch.sum(alpha, -1, keepdim=True, out=scale_steps[t])
        alpha.div_(scale_steps[t])
    lengths = mask.sum(1)  # shape: (B,)
    last = (lengths - 1).clamp(min=0)
    final = alphas[last, torch.arange(batch, device=mask.device)] @ ends  # shape: (B,)
    step_mask = time_mask.unsqueeze(-1)
    logs = torch.where(step_mask, scales.log() + shifts, scales.new_zeros(()))
    log_z = logs.sum((0, 2)) + final.log() + start_shift + end_shift + last * move_shift
    nonempty = lengths > 0
    bad = ((scales < tiny) & step_mask).any(0).squeeze(-1) | (final < tiny)
    bad = (bad | ~torch.isfinite(log_z)) & nonempty
    log_z = torch.where(nonempty, log_z, log_z.new_zeros(()))
    return _Forward(log_z, probs, moves, ends, alphas, scales, bad)


def _scaled_backward(state: _Forward, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Backward recursion matching `_scaled_forward`: normalised betas `(T, B, K)`, normalisers."""
    steps = state.probs.shape[0]
    next_mask = torch.cat([mask.t()[1:], mask.new_zeros(1, mask.shape[0])]).unsqueeze(-1)
    ends = state.ends / state.ends.sum()
    betas = torch.empty_like(state.probs)
    sums = torch.ones_like(state.scales)  # shape: (T, B, 1)
    if steps == 0:
        return betas, sums
    betas[-1] = ends
    beta_steps, prob_steps, sum_steps = betas.unbind(0), state.probs.unbind(0), sums.unbind(0)
    mask_steps = next_mask.unbind(0)
    moves_t = state.moves.t()
    for t in range(steps - 2, -1, -1):
        beta = beta_steps[t]
        torch.mm(prob_steps[t + 1] * beta_steps[t + 1], moves_t, out=beta)
        torch.sum(beta, -1, keepdim=True, out=sum_steps[t])
        beta.div_(sum_steps[t])
        torch.where(mask_steps[t], beta, ends, out=beta)
    return betas, torch.where(next_mask, sums, sums.new_ones(()))


class _Posteriors(NamedTuple):
    """Token posteriors and what the transition gradient needs, time-major."""

    marginals: Tensor  # shape: (T, B, K), zero where masked or for `bad` rows
    betas: Tensor  # shape: (T, B, K)
    norms: Tensor  # shape: (T, B, 1), sum over tags of alphas * betas
    bad: Tensor  # shape: (B,), rows whose scaled values may have underflowed


def _scaled_posteriors(state: _Forward, mask: Tensor) -> _Posteriors:
    """Marginals from normalised alphas and betas, flagging rows where either pass underflowed."""
    tiny = torch.finfo(state.probs.dtype).tiny ** 0.5
    betas, sums = _scaled_backward(state, mask)
    joint = state.alphas * betas  # shape: (T, B, K)
    norms = joint.sum(-1, keepdim=True)  # shape: (T, B, 1)
    time_mask = mask.t().unsqueeze(-1)  # shape: (T, B, 1)
    weak = (~(norms >= tiny) | (sums < tiny)) & time_mask
    bad = state.bad | weak.any(0).squeeze(-1)
    keep = time_mask & ~bad.view(1, -1, 1)
    norms = torch.where(keep, norms, norms.new_ones(()))
    marginals = torch.where(keep, joint / norms, joint.new_zeros(()))
    return _Posteriors(marginals, betas, norms, bad)


class _LogPartition(torch.autograd.Function):
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
        state = _scaled_forward(emissions, trans, start, end, mask)
        log_z = state.log_z
        if bool(state.bad.any()):
            rows = state.bad.nonzero().squeeze(1)
            log_z = log_z.clone()
            wide = (x.double() for x in (emissions[rows], trans, start, end))
            log_z[rows] = _reference_log_z(*wide, mask[rows]).to(log_z.dtype)
        ctx.save_for_backward(emissions, trans, start, end, mask)
        ctx.state = state
        return log_z

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_log_z: Tensor
    ) -> tuple[Tensor | None, ...]:
        emissions, trans, start, end, mask = ctx.saved_tensors
        state: _Forward = ctx.state
        if emissions.shape[1] == 0:
            return (
                torch.zeros_like(emissions),
                *(torch.zeros_like(x) for x in (trans, start, end)),
                None,
            )
        post = _scaled_posteriors(state, mask)
        weights = torch.where(post.bad, grad_log_z.new_zeros(()), grad_log_z)  # shape: (B,)
        weighted = post.marginals * weights.view(1, -1, 1)  # shape: (T, B, K)
        lengths = mask.sum(1)
        batch_index = torch.arange(mask.shape[0], device=mask.device)
        d_emissions = weighted.transpose(0, 1)
        d_start = weighted[0].sum(0)
        d_end = weighted[(lengths - 1).clamp(min=0), batch_index].sum(0)
        # Pairwise marginals summed over batch and time, as one matrix product:
        # xi_t(i, j) = alpha_{t-1}(i) moves(i, j) probs_t(j) beta_t(j) / (scale_t norm_t).
        num_tags = trans.shape[0]
        rate = weights.view(1, -1, 1) / (state.scales[1:] * post.norms[1:])
        right = state.probs[1:] * post.betas[1:] * rate * mask.t()[1:].unsqueeze(-1)
        left = state.alphas[:-1].masked_fill(post.bad.view(1, -1, 1), 0.0)
        left, right = left.reshape(-1, num_tags), right.reshape(-1, num_tags)
        d_trans = state.moves * (left.t() @ right.nan_to_num(0.0, 0.0, 0.0))
        if bool(post.bad.any()):
            rows = post.bad.nonzero().squeeze(1)
            grads = _reference_grads(
                emissions[rows], trans, start, end, mask[rows], grad_log_z[rows]
            )
            d_emissions = d_emissions.clone()
            d_emissions[rows] = grads[0]
            d_trans, d_start, d_end = d_trans + grads[1], d_start + grads[2], d_end + grads[3]
        return d_emissions, d_trans, d_start, d_end, None


def _reference_log_z(
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


def _reference_grads(
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
        log_z = _reference_log_z(*inputs, mask.clone())
        weights = torch.ones_like(log_z) if grad_log_z is None else grad_log_z.detach().double()
        grads = torch.autograd.grad(log_z, inputs, weights)
    return tuple(g.nan_to_num(0.0).to(dtype) for g in grads)  # type: ignore[return-value]


def _viterbi(
    emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Max-product forward pass, then a backtrace that is one gather per step."""
    batch, steps, num_tags = emissions.shape
    paths = torch.full((batch, steps), -1, dtype=torch.long, device=emissions.device)
    if steps == 0:
        return paths, emissions.new_zeros(batch)
    time_mask = mask.t().unsqueeze(-1)  # shape: (T, B, 1)
    emissions = emissions.transpose(0, 1).masked_fill(~time_mask, 0.0)  # shape: (T, B, K)
    history = torch.empty(steps, batch, num_tags, dtype=torch.long, device=emissions.device)
    best = torch.empty(batch, num_tags, dtype=emissions.dtype, device=emissions.device)
    score = start + emissions[0]  # shape: (B, K)
    for t in range(1, steps):
        torch.max(score.unsqueeze(2) + trans, dim=1, out=(best, history[t]))
        best.add_(emissions[t])
        score = torch.where(time_mask[t], best, score)
    identity = torch.arange(num_tags, device=emissions.device)
    history = torch.where(time_mask, history, identity)  # padding passes tags through
    scores, tag = (score + end).max(-1)  # shape: (B,), (B,)
    tags = [tag]
    for t in range(steps - 1, 0, -1):
        tag = history[t].gather(1, tag.unsqueeze(1)).squeeze(1)
        tags.append(tag)
    paths = torch.stack(tags[::-1], dim=1).masked_fill(~mask, -1)
    scores = torch.where(mask[:, 0], scores, scores.new_zeros(()))
    return paths, scores
