"""Exact probabilities of tag spans under a linear-chain CRF, from one forward-backward pass.

`piece_nbest` uses the same messages for the `k` most probable labellings of pieces of a
sequence (its sentences), each with its exact probability under the whole sequence's CRF:
a k-best Viterbi over the piece, entered through the prefix sums before it and left through
the suffix sums after it.

The probability that tokens `s..e-1` of a sequence carry the tags `tau` (and, optionally, that
token `e` does not carry a given tag, which would continue an entity) is a sum over every
path that agrees: in log space,

    prefix_s(tau_0) + sum_{m >= 1} (trans(tau_{m-1}, tau_m) + emit_{s+m}(tau_m)) + tail - log Z

where `prefix` sums the paths into a tag from the start, and `tail` sums the paths out of
`tau_{n-1}` to the end (`suffix` at `e`), leaving out the excluded next tag. One pass over the
batch gives both sums at every position, so any number of spans costs one pass, instead of
one constrained pass per span. Kept scaled (no underflow on long sequences) and read in log
space only where a span needs them; callers pass float64 scores when they want probabilities
exact to float64.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from .forward_backward import masked_exp
from .nbest import kbest_viterbi
from .viterbi import viterbi

NEG_INF = float("-inf")


def _logsumexp(scores: Tensor, dim: int) -> Tensor:
    """`logsumexp` that gives `-inf`, not nan, where every score is `-inf`."""
    top = scores.amax(dim, keepdim=True)
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    out = (scores - safe).exp().sum(dim).log() + safe.squeeze(dim)
    return out


class Messages(NamedTuple):
    """Prefix and suffix sums of a batch of sequences, scaled: `states` `(T, 2, B, K)` sum to
    1 over the tags, with `log_scale` `(T, 2, B)` their logs' offsets; `[:, 0]` runs forward
    from the start, `[:, 1]` backward from each row's last token (at index `length - 1 - t`).
    `log_z` `(B,)` is each row's log partition."""

    states: Tensor
    log_scale: Tensor
    lengths: Tensor
    log_z: Tensor

    def prefix(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Log sums `(N, K)` of the path prefixes that end in each tag at `positions[n]` of
        row `rows[n]`, its emission included; `-inf` past the row's length."""
        return self._read(0, rows, positions, positions)

    def suffix(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Log sums `(N, K)` of the path suffixes that start in each tag at `positions[n]`
        of row `rows[n]`, its emission and the end score included."""
        return self._read(1, rows, positions, self.lengths[rows] - 1 - positions)

    def _read(self, way: int, rows: Tensor, positions: Tensor, steps: Tensor) -> Tensor:
        inside = (positions >= 0) & (positions < self.lengths[rows])  # shape: (N,)
        steps = torch.where(inside, steps, 0)
        logs = self.states[steps, way, rows].log() + self.log_scale[steps, way, rows, None]
        return logs.masked_fill(~inside.unsqueeze(1), NEG_INF)


@torch.no_grad()
def forward_backward(
    emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> Messages:
    """The prefix and suffix sums of every row and position, and the log partitions.

    The suffix sums are the prefix sums of each row read backwards under the transposed
    moves, so one recursion computes both, as a batch of two: one `(2, B, K) @ (2, K, K)`
    product per step, in probability space, each step renormalised, its scale summed in log
    space after the loop. Past a row's length the recursion runs on (emissions 0) and
    nothing there is read. Exponentials of `B T K` scores, instead of `B T K K`. Without
    gradients: the sums are for reading probabilities, not for training.
    """
    batch, steps, num_tags = emissions.shape
    lengths = mask.sum(1)  # shape: (B,)
    if steps == 0:
        empty = emissions.new_zeros((0, 2, batch, num_tags))
        return Messages(empty, empty[..., 0], lengths, emissions.new_zeros(batch))
    positions = torch.arange(steps, device=mask.device)
    mirrored = lengths.unsqueeze(1) - 1 - positions  # shape: (B, T)
    mirrored = torch.where(mirrored >= 0, mirrored, positions)
    scores = torch.where(mask.unsqueeze(-1), emissions, 0.0)  # shape: (B, T, K)
    backwards = scores.gather(1, mirrored.unsqueeze(-1).expand(-1, -1, num_tags))
    probs = torch.stack([scores, backwards])  # shape: (2, B, T, K)
    shifts = probs.amax(-1, keepdim=True)  # shape: (2, B, T, 1)
    probs = masked_exp(probs.sub_(shifts), probs.new_ones(()))
    moves, move_shift = _shifted_exp(trans)  # shape: (K, K)
    starts, start_shift = _shifted_exp(start)  # shape: (K,)
    ends, end_shift = _shifted_exp(end)  # shape: (K,)
    moves = torch.stack([moves, moves.t()])  # shape: (2, K, K)
    first = torch.stack([starts, ends]).unsqueeze(1)  # shape: (2, 1, K)
    states = torch.empty((steps, 2, batch, num_tags), dtype=probs.dtype, device=probs.device)
    totals = probs.new_empty((steps, 2, batch, 1))
    step = first * probs[:, :, 0]  # shape: (2, B, K)
    for t in range(steps):
        if t:
            step = torch.bmm(states[t - 1], moves, out=step).mul_(probs[:, :, t])
        torch.div(step, torch.sum(step, -1, keepdim=True, out=totals[t]), out=states[t])
    increments = totals.squeeze(-1).log_() + shifts.squeeze(-1).permute(2, 0, 1)  # (T, 2, B)
    firsts = torch.tensor([start_shift, end_shift], dtype=probs.dtype, device=probs.device)
    increments[0] += firsts.unsqueeze(1)
    increments[1:] += move_shift
    log_scale = increments.cumsum(0)  # shape: (T, 2, B)
    rows = torch.arange(batch, device=mask.device)
    last = (lengths - 1).clamp(min=0)  # shape: (B,)
    ending = (states[last, 0, rows] * ends).sum(-1)  # shape: (B,)
    log_z = ending.log() + end_shift + log_scale[last, 0, rows]
    log_z = torch.where(lengths > 0, log_z, log_z.new_zeros(()))
    return Messages(states, log_scale, lengths, log_z)


def _shifted_exp(scores: Tensor) -> tuple[Tensor, float]:
    """`exp(scores - max)` and the max of the finite scores (forbidden ones become 0)."""
    finite = scores[torch.isfinite(scores)]
    top = float(finite.max()) if finite.numel() else 0.0
    return torch.exp(scores - top), top


def span_log_probs(
    messages: Messages,
    emissions: Tensor,
    trans: Tensor,
    end: Tensor,
    rows: Tensor,
    starts: Tensor,
    tags: Tensor,
    after: Tensor,
) -> Tensor:
    """Log probability `(E,)` of each span: sequence `rows[e]`, tokens from `starts[e]` on
    with the tags `tags[e]` (`(E, L)`, -1 after the span's last token), and the next token
    not tagged `after[e]` (-1: no condition). `messages` are `forward_backward`'s over the
    same emissions; scores are as `CRF._scores` gives them (forbidden moves at `-inf`)."""
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
    inner = messages.prefix(rows, starts).gather(1, safe_tags[:, :1]).squeeze(1)  # (E,)
    inner = inner + torch.where(inside[:, 1:], moves + emitted[:, 1:], 0.0).sum(1)
    last_tag = safe_tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)  # shape: (E,)
    last_position = starts + lengths - 1  # shape: (E,)
    sequence_lengths = messages.lengths[rows]  # shape: (E,)
    at_end = last_position >= sequence_lengths - 1
    following = torch.where(at_end, last_position, last_position + 1)  # shape: (E,)
    out_moves = trans[last_tag] + messages.suffix(rows, following)  # shape: (E, K)
    excluded = (after >= 0) & ~at_end
    out_moves[excluded, after[excluded]] = NEG_INF
    tail = torch.where(at_end, end[last_tag], _logsumexp(out_moves, dim=1))
    return inner + tail - messages.log_z[rows]


def piece_nbest(
    messages: Messages,
    emissions: Tensor,
    trans: Tensor,
    start: Tensor,
    rows: Tensor,
    starts: Tensor,
    ends: Tensor,
    k: int,
) -> tuple[Tensor, Tensor]:
    """The `k` most probable labellings `(P, k, L)` (padded with -1) of each piece, tokens
    `starts[p]..ends[p]-1` of sequence `rows[p]`, and their log probabilities `(P, k)` under
    the sequence's CRF (every labelling of the rest of the sequence summed over), best first.
    Missing labellings (a piece with fewer than `k`) have `-inf`. Pieces are searched in
    groups of similar length (widths within a factor of two), not all padded to the longest:
    sentences of one text range from a word to hundreds. `messages` as for `span_log_probs`."""
    sizes = ends - starts  # shape: (P,)
    paths = torch.full((len(rows), k, int(sizes.max())), -1, dtype=torch.long, device=rows.device)
    best = emissions.new_full((len(rows), k), NEG_INF)
    groups = torch.ceil(torch.log2(sizes.clamp(min=1).to(torch.float64))).to(torch.long)
    for group in torch.unique(groups).tolist():
        index = torch.nonzero(groups == group).squeeze(1)
        found, scores = _piece_search(
            emissions, messages, trans, start, rows[index], starts[index], ends[index], k
        )
        paths[index, :, : found.shape[2]] = found
        best[index] = scores
    return paths, best - messages.log_z[rows].unsqueeze(1)


def _piece_search(
    emissions: Tensor,
    messages: Messages,
    trans: Tensor,
    start: Tensor,
    rows: Tensor,
    starts: Tensor,
    ends: Tensor,
    k: int,
) -> tuple[Tensor, Tensor]:
    """`piece_nbest`'s search for some pieces, padded to the longest of them; scores not yet
    normalized by `log Z`."""
    sizes = ends - starts  # shape: (P,)
    width = int(sizes.max())
    positions = starts.unsqueeze(1) + torch.arange(width, device=rows.device)  # shape: (P, L)
    piece_mask = positions < ends.unsqueeze(1)  # shape: (P, L)
    safe = torch.where(piece_mask, positions, starts.unsqueeze(1))
    scores = emissions[rows.unsqueeze(1), safe]  # shape: (P, L, K), a copy
    before = (starts - 1).clamp(min=0)
    entering = _logsumexp(
        messages.prefix(rows, before).unsqueeze(2) + trans, dim=1
    )  # shape: (P, K)
    entering = torch.where((starts > 0).unsqueeze(1), entering, start)
    pieces = torch.arange(len(rows), device=rows.device)
    scores[pieces, sizes - 1] = messages.suffix(rows, ends - 1)  # its emission and all after it
    scores[:, 0] += entering
    zero = trans.new_zeros(trans.shape[0])
    if k == 1:  # the same path and score as the k-best search, at the cost of Viterbi
        path, score = viterbi(scores, piece_mask, trans, zero, zero)
        return path.unsqueeze(1), score.unsqueeze(1)
    return kbest_viterbi(scores, piece_mask, trans, zero, zero, k)
