"""Exact probabilities of tag spans under a linear-chain CRF, from one forward-backward pass.

`piece_nbest` uses the same messages for the `k` most probable labellings of pieces of a
sequence (its sentences), each with its exact probability under the whole sequence's CRF:
a k-best Viterbi over the piece, entered through the forward message before it and left
through the backward message after it.

The probability that tokens `s..e-1` of a sequence carry the tags `tau` (and, optionally, that
token `e` does not carry a given tag, which would continue an entity) is a sum over every
path that agrees: in log space,

    alpha_s(tau_0) + sum_{m >= 1} (trans(tau_{m-1}, tau_m) + emit_{s+m}(tau_m)) + tail - log Z

where `alpha` sums the paths into a tag from the start, and `tail` sums the paths out of
`tau_{n-1}` to the end (`beta`), leaving out the excluded next tag. One pass over the batch
gives `alpha` and `beta` for every position, so any number of spans costs one pass, instead
of one constrained pass per span. Computed in log space (no underflow on long sequences);
callers pass float64 scores when they want probabilities exact to float64.
"""

import torch
from torch import Tensor

from .nbest import kbest_viterbi

NEG_INF = float("-inf")


def _logsumexp(scores: Tensor, dim: int) -> Tensor:
    """`logsumexp` that gives `-inf`, not nan, where every score is `-inf`."""
    top = scores.amax(dim, keepdim=True)
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    out = (scores - safe).exp().sum(dim).log() + safe.squeeze(dim)
    return out


def forward_backward(
    emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Log forward and backward messages `(B, T, K)` and log partitions `(B,)`.

    `alpha[b, t, j]` sums the scores of the path prefixes that end in tag `j` at `t` (its
    emission included); `beta[b, t, i]` those of the suffixes after tag `i` at `t` (the end
    score included). Positions past a row's length hold `-inf`. The recursions run in
    probability space, one `(B, K) @ (K, K)` product per step, each step renormalised with
    its scale kept in log space: exponentials of `B T K` scores instead of `B T K K`.
    """
    batch, steps, num_tags = emissions.shape
    alpha = emissions.new_full((batch, steps, num_tags), NEG_INF)
    beta = emissions.new_full((batch, steps, num_tags), NEG_INF)
    if steps == 0:
        return alpha, beta, emissions.new_zeros(batch)
    lengths = mask.sum(1)  # shape: (B,)
    last = (lengths - 1).clamp(min=0)  # shape: (B,)
    scores = torch.where(mask.unsqueeze(-1), emissions, 0.0)  # shape: (B, T, K)
    shifts = scores.amax(-1)  # shape: (B, T)
    probs = torch.exp(scores - shifts.unsqueeze(-1))  # shape: (B, T, K)
    moves, move_shift = _shifted_exp(trans)  # shape: (K, K)
    starts, start_shift = _shifted_exp(start)  # shape: (K,)
    ends, end_shift = _shifted_exp(end)  # shape: (K,)
    forward = starts * probs[:, 0]  # shape: (B, K)
    total = forward.sum(-1, keepdim=True)
    forward = forward / total
    log_scale = total.squeeze(-1).log() + start_shift + shifts[:, 0]  # shape: (B,)
    alpha[:, 0] = forward.log() + log_scale.unsqueeze(-1)
    for t in range(1, steps):
        step = (forward @ moves) * probs[:, t]  # shape: (B, K)
        total = step.sum(-1, keepdim=True)
        live = mask[:, t]
        forward = torch.where(live.unsqueeze(-1), step / total, forward)
        log_scale = torch.where(
            live, log_scale + total.squeeze(-1).log() + move_shift + shifts[:, t], log_scale
        )
        alpha[:, t] = torch.where(
            live.unsqueeze(-1), forward.log() + log_scale.unsqueeze(-1), NEG_INF
        )
    log_z = (forward * ends).sum(-1).log() + end_shift + log_scale  # shape: (B,)
    rows = torch.arange(batch, device=mask.device)
    backward = ends.expand(batch, num_tags).clone()  # shape: (B, K), at each row's last token
    log_scale = torch.full_like(log_z, end_shift)
    beta[rows, last] = ends.log() + end_shift
    for t in range(steps - 2, -1, -1):
        step = (probs[:, t + 1] * backward) @ moves.t()  # shape: (B, K)
        total = step.sum(-1, keepdim=True)
        live = t < last  # shape: (B,)
        backward = torch.where(live.unsqueeze(-1), step / total, backward)
        log_scale = torch.where(
            live, log_scale + total.squeeze(-1).log() + move_shift + shifts[:, t + 1], log_scale
        )
        beta[:, t] = torch.where(
            live.unsqueeze(-1), backward.log() + log_scale.unsqueeze(-1), beta[:, t]
        )
    return alpha, beta, torch.where(lengths > 0, log_z, log_z.new_zeros(()))


def _shifted_exp(scores: Tensor) -> tuple[Tensor, float]:
    """`exp(scores - max)` and the max of the finite scores (forbidden ones become 0)."""
    finite = scores[torch.isfinite(scores)]
    top = float(finite.max()) if finite.numel() else 0.0
    return torch.exp(scores - top), top


def span_log_probs(
    emissions: Tensor,
    mask: Tensor,
    trans: Tensor,
    start: Tensor,
    end: Tensor,
    rows: Tensor,
    starts: Tensor,
    tags: Tensor,
    after: Tensor,
) -> Tensor:
    """Log probability `(E,)` of each span: sequence `rows[e]`, tokens from `starts[e]` on
    with the tags `tags[e]` (`(E, L)`, -1 after the span's last token), and the next token
    not tagged `after[e]` (-1: no condition). Scores are as `CRF._scores` gives them (with
    forbidden moves at `-inf`)."""
    alpha, beta, log_z = forward_backward(emissions, mask, trans, start, end)
    spans, width = tags.shape
    lengths = (tags >= 0).sum(1)  # shape: (E,)
    if bool((lengths < 1).any()):
        raise ValueError("every span needs at least one tag")
    positions = starts.unsqueeze(1) + torch.arange(width, device=tags.device)  # shape: (E, L)
    inside = tags >= 0  # shape: (E, L)
    safe_tags = tags.clamp(min=0)
    safe_positions = torch.where(inside, positions, starts.unsqueeze(1))
    emitted = emissions[rows.unsqueeze(1), safe_positions, safe_tags]  # shape: (E, L)
    moves = trans[safe_tags[:, :-1], safe_tags[:, 1:]]  # shape: (E, L - 1)
    inner = alpha[rows, starts, safe_tags[:, 0]]  # shape: (E,)
    inner = inner + torch.where(inside[:, 1:], moves + emitted[:, 1:], 0.0).sum(1)
    last_tag = safe_tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)  # shape: (E,)
    last_position = starts + lengths - 1  # shape: (E,)
    sequence_lengths = mask.sum(1)[rows]  # shape: (E,)
    at_end = last_position >= sequence_lengths - 1
    following = (last_position + 1).clamp(max=emissions.shape[1] - 1)  # shape: (E,)
    out_moves = trans[last_tag] + emissions[rows, following] + beta[rows, following]  # (E, K)
    excluded = (after >= 0) & ~at_end
    out_moves[excluded, after[excluded]] = NEG_INF
    tail = torch.where(at_end, end[last_tag], _logsumexp(out_moves, dim=1))
    return inner + tail - log_z[rows]


def piece_nbest(
    emissions: Tensor,
    mask: Tensor,
    trans: Tensor,
    start: Tensor,
    end: Tensor,
    rows: Tensor,
    starts: Tensor,
    ends: Tensor,
    k: int,
) -> tuple[Tensor, Tensor]:
    """The `k` most probable labellings `(P, k, L)` (padded with -1) of each piece, tokens
    `starts[p]..ends[p]-1` of sequence `rows[p]`, and their log probabilities `(P, k)` under
    the sequence's CRF (every labelling of the rest of the sequence summed over), best first.
    Missing labellings (a piece with fewer than `k`) have `-inf`."""
    alpha, beta, log_z = forward_backward(emissions, mask, trans, start, end)
    sizes = ends - starts  # shape: (P,)
    width = int(sizes.max())
    positions = starts.unsqueeze(1) + torch.arange(width, device=rows.device)  # shape: (P, L)
    piece_mask = positions < ends.unsqueeze(1)  # shape: (P, L)
    safe = torch.where(piece_mask, positions, starts.unsqueeze(1))
    scores = emissions[rows.unsqueeze(1), safe].clone()  # shape: (P, L, K)
    before = (starts - 1).clamp(min=0)
    entering = _logsumexp(alpha[rows, before].unsqueeze(2) + trans, dim=1)  # shape: (P, K)
    entering = torch.where((starts > 0).unsqueeze(1), entering, start)
    pieces = torch.arange(len(rows), device=rows.device)
    scores[:, 0] += entering
    scores[pieces, sizes - 1] += beta[rows, ends - 1]
    zero = trans.new_zeros(trans.shape[0])
    paths, best = kbest_viterbi(scores, piece_mask, trans, zero, zero, k)
    return paths, best - log_z[rows].unsqueeze(1)
