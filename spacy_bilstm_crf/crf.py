"""A linear-chain CRF in plain PyTorch: exact, batched, constrained and partial-label aware.

Shapes follow one convention: `B` sequences, `T` time steps, `K` tags. Inputs are batch-first,
masks are bool and left-aligned, and rows may have length zero (their log partition is 0 and
their best path is empty).

The log partition is computed in probability space, one `(K, K) @ (K, B)` product per step with
each step renormalised, and its gradient (the marginals minus the observed counts) comes from a
hand-written forward-backward pass instead of autograd through `T` steps. When a gradient is
wanted, the backward recursion runs in the same loop over the steps in reverse, so that one
block-diagonal product per step serves both. A row whose renormaliser gets so small that
underflow could change the result is recomputed in log space, so the fast path never trades
exactness for speed. Viterbi keeps only scores on the way forward and recomputes, on the way
back, the one maximum per step that the best path needs; `nbest.py` has the k-best Viterbi.

On CPU, at the sizes of NER batches, time goes to the overhead of each torch operation rather
than to arithmetic, so the loops are kept to a few operations per step on preallocated buffers.
"""

import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .nbest import kbest_viterbi
from .span_probs import piece_nbest, span_log_probs
from .tags import Constraints

BoolMatrix = Tensor | Sequence[Sequence[bool]]
INFEASIBLE = ("raise", "inf")


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

    def forward(
        self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, infeasible: str = "raise"
    ) -> Tensor:
        """Same as `nll`: the per-sequence negative log-likelihood."""
        return self.nll(emissions, tags, mask, infeasible=infeasible)

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        candidates: Tensor | None = None,
        *,
        infeasible: str = "raise",
    ) -> Tensor:
        """Negative log-likelihood of `tags` per sequence, shape `(B,)`.

        A tag of `-1` means unknown: the likelihood sums over every tag there, or over the tags
        that `candidates` (bool `(B, T, K)`) allows. Fully observed rows use the gold path score
        directly. A row that no allowed path agrees with (gold tags with a forbidden move, or
        known tags and candidates that leave no allowed path) is a ValueError naming the row,
        the position and the move; with `infeasible="inf"` its loss is `inf` instead, with a
        zero gradient.
        """
        if infeasible not in INFEASIBLE:
            raise ValueError(f"infeasible must be one of {INFEASIBLE}, got {infeasible!r}.")
        mask = self._check(emissions, mask)
        tags = self._check_tags(tags, mask)
        trans, start, end = self._scores(emissions.dtype)
        unknown = (tags == -1) & mask  # shape: (B, T)
        if not bool(unknown.any()):
            nll = _gold_nll(emissions, trans, start, end, mask, tags)
            if infeasible == "raise":
                self._raise_if_infeasible(nll, emissions, tags, mask, None)
            return nll
        log_z = _log_partition(emissions, trans, start, end, mask)
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
        log_z_observed = _log_partition(clamped, trans, start, end, mask)
        nll = _difference(log_z, log_z_observed)
        if infeasible == "raise":
            self._raise_if_infeasible(nll, emissions, tags, mask, candidates)
        return nll

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log of the sum of exp-scores over all allowed paths, shape `(B,)`."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores(emissions.dtype)
        return _log_partition(emissions, trans, start, end, mask)

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
        state = _scaled_forward(emissions, trans, start, end, mask, backward=True)
        post = _scaled_posteriors(state)
        posteriors = post.marginals  # shape: (T, K, B)
        if bool(post.bad.any()):
            rows = post.bad.nonzero().squeeze(1)
            grads = _reference_grads(emissions[rows], trans, start, end, mask[rows], None)
            posteriors[:, :, rows] = grads[0].permute(1, 2, 0)
        return posteriors.permute(2, 0, 1)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Viterbi: the best path per sequence and its score.

        Returns `paths` `(B, T)` long, padded with `-1` where masked, and `scores` `(B,)`.
        Use `to_lists` for ragged Python lists.
        """
        mask = self._check(emissions, mask)
        return _viterbi(emissions.detach(), mask, *self._scores(emissions.dtype))

    @torch.no_grad()
    def nbest(
        self, emissions: Tensor, mask: Tensor | None = None, *, k: int
    ) -> tuple[Tensor, Tensor]:
        """k-best Viterbi: the `k` best allowed paths per sequence and their scores, best first.

        Returns `paths` `(B, k, T)` long, padded with `-1` where masked, and `scores` `(B, k)`.
        A row with fewer than `k` allowed paths fills the rest with score `-inf` and only `-1`
        tags; a row of length zero has one path, the empty one, with score 0. Paths of equal
        score come in the order of their tags read from the end, lowest first, so `k=1` gives
        `decode`'s paths and scores exactly. `path_probs` turns the scores into probabilities;
        `nbest_to_lists` gives ragged lists without the missing paths.
        """
        k = operator.index(k)
        if k < 1:
            raise ValueError(f"nbest needs k >= 1 paths per sequence, got k={k}.")
        mask = self._check(emissions, mask)
        scores = self._scores(emissions.dtype)
        if k == 1:  # the same paths and scores, at the cost of a plain Viterbi
            paths, best = _viterbi(emissions.detach(), mask, *scores)
            return paths.unsqueeze(1), best.unsqueeze(1)
        return kbest_viterbi(emissions.detach(), mask, *scores, k)

    @torch.no_grad()
    def path_probs(self, emissions: Tensor, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        """Probabilities `exp(score - log Z)` of paths with these scores, shaped like `scores`.

        `scores` is `(B,)` (from `decode`) or `(B, k)` (from `nbest`); `-inf` gives 0. Where
        rounding would make a row's probabilities sum past one, they are scaled down to one.
        """
        log_z = self.log_partition(emissions, mask)  # shape: (B,)
        if scores.dim() not in (1, 2) or scores.shape[0] != log_z.shape[0]:
            raise ValueError(
                f"scores must have shape ({log_z.shape[0]},) or ({log_z.shape[0]}, k), "
                f"got {tuple(scores.shape)}."
            )
        rows = scores.reshape(log_z.shape[0], -1)  # shape: (B, k)
        probs = torch.exp(rows - log_z.unsqueeze(1))  # shape: (B, k)
        probs = probs / probs.sum(1, keepdim=True).clamp(min=1.0)  # shape: (B, k)
        return probs.reshape(scores.shape)

    @torch.no_grad()
    def span_probs(
        self,
        emissions: Tensor,
        mask: Tensor | None,
        rows: Tensor,
        starts: Tensor,
        tags: Tensor,
        after: Tensor | None = None,
    ) -> Tensor:
        """The probability `(E,)` that span `e` has exactly its tags: sequence `rows[e]`,
        tokens from `starts[e]` on tagged `tags[e]` (`(E, L)` long, padded with -1), and, when
        `after[e]` is a tag id, the token after the span not tagged `after[e]` (the tag that
        would continue an entity). One forward-backward pass for all spans (`span_probs.py`)."""
        mask = self._check(emissions, mask)
        if after is None:
            after = torch.full_like(rows, -1)
        if not (rows.shape == starts.shape == after.shape == tags.shape[:1]):
            raise ValueError("rows, starts and after must have one entry per row of tags.")
        lengths = (tags >= 0).sum(1)
        if bool((starts < 0).any() | (starts + lengths > mask.sum(1)[rows]).any()):
            raise ValueError("every span must lie inside its sequence.")
        log_probs = span_log_probs(
            emissions, mask, *self._scores(emissions.dtype), rows, starts, tags, after
        )
        return log_probs.exp()

    @torch.no_grad()
    def piece_nbest(
        self,
        emissions: Tensor,
        mask: Tensor | None,
        rows: Tensor,
        starts: Tensor,
        ends: Tensor,
        k: int,
    ) -> tuple[Tensor, Tensor]:
        """The `k` most probable labellings of pieces of sequences (such as the sentences of a
        document) and their log probabilities under each whole sequence's CRF, best first:
        paths `(P, k, L)` padded with -1, log probabilities `(P, k)`, `-inf` where a piece has
        fewer than `k`. Piece `p` is tokens `starts[p]..ends[p]-1` of sequence `rows[p]`."""
        mask = self._check(emissions, mask)
        if k < 1:
            raise ValueError(f"piece_nbest needs k >= 1, got k={k}.")
        if bool((starts < 0).any() | (ends <= starts).any() | (ends > mask.sum(1)[rows]).any()):
            raise ValueError("every piece must be non-empty and lie inside its sequence.")
        return piece_nbest(emissions, mask, *self._scores(emissions.dtype), rows, starts, ends, k)

    @torch.no_grad()
    def scaled(self, temperature: float) -> "CRF":
        """A copy whose transition, start and end scores are divided by `temperature`, with the
        same constraints. With emissions divided by it too, the best paths stay the same and
        the probabilities get flatter (above 1) or sharper (below 1): temperature scaling."""
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        copy = CRF(self.num_tags, Constraints(self.allowed, self.allowed_start, self.allowed_end))
        for name in ("transitions", "start_transitions", "end_transitions"):
            getattr(copy, name).copy_(getattr(self, name) / temperature)
        return copy.to(self.transitions.device)

    @staticmethod
    def to_lists(paths: Tensor, mask: Tensor) -> list[list[int]]:
        """Ragged lists of tag ids from padded `paths` and their mask."""
        lengths = mask.sum(1).tolist()
        return [row[:n] for row, n in zip(paths.tolist(), lengths)]

    @staticmethod
    def nbest_to_lists(paths: Tensor, scores: Tensor, mask: Tensor) -> list[list[list[int]]]:
        """Per sequence, the ragged tag-id lists of its `nbest` paths, best first.

        Missing paths (score `-inf`) are left out, so a row may have fewer than `k`.
        """
        lengths = mask.sum(1).tolist()
        found = (scores > float("-inf")).tolist()
        return [
            [path[:n] for path, ok in zip(row, oks) if ok]
            for row, oks, n in zip(paths.tolist(), found, lengths)
        ]

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Transition, start and end scores with forbidden moves at `-inf`."""
        neg_inf = float("-inf")
        trans = torch.where(self.allowed, self.transitions.to(dtype), neg_inf)
        start = torch.where(self.allowed_start, self.start_transitions.to(dtype), neg_inf)
        end = torch.where(self.allowed_end, self.end_transitions.to(dtype), neg_inf)
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
        if bool((mask[:, 1:] > mask[:, :-1]).any()):
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

    def _raise_if_infeasible(
        self, nll: Tensor, emissions: Tensor, tags: Tensor, mask: Tensor, candidates: Tensor | None
    ) -> None:
        """Raise a ValueError for rows of `inf` loss that no allowed path agrees with.

        The common case costs one comparison; reasons are found on the host only when a loss
        is `inf` (which may also come from overflowing scores: those rows are left alone).
        """
        infinite = torch.isposinf(nll.detach())  # shape: (B,)
        if not bool(infinite.any()):
            return
        rules = [x.cpu().numpy() for x in (self.allowed, self.allowed_start, self.allowed_end)]
        reasons = {}
        for row in infinite.nonzero().squeeze(1).tolist():
            length = int(mask[row].sum())
            allowed_tags = None if candidates is None else candidates[row, :length].cpu().numpy()
            known, scores = tags[row, :length].cpu().numpy(), emissions[row, :length].detach()
            finite = (scores > float("-inf")).cpu().numpy()  # shape: (L, K)
            reason = _infeasible_reason(row, known, finite, allowed_tags, *rules)
            if reason is not None:
                reasons[row] = reason
        if reasons:
            rows = list(reasons)
            more = f" ({len(rows)} rows in all: {rows})" if len(rows) > 1 else ""
            raise ValueError(
                f"{reasons[rows[0]]}{more}; pass infeasible='inf' to nll for an infinite loss "
                "instead."
            )


def _infeasible_reason(
    row: int,
    known: np.ndarray,
    finite: np.ndarray,
    candidates: np.ndarray | None,
    allowed: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
) -> str | None:
    """Why no allowed path of length `L` agrees with tags `known` `(L,)` (-1: unknown), or None.

    Follows the tags that allowed paths agreeing with the row can reach at each position, and
    names the first position where none is left (or the end). `finite` `(L, K)` says where the
    emission scores are not `-inf`; `candidates` `(L, K)` restricts the unknown positions.
    """
    length, num_tags = finite.shape
    is_known = known >= 0  # shape: (L,)
    free = np.ones_like(finite) if candidates is None else candidates  # shape: (L, K)
    one_hot = np.eye(num_tags, dtype=bool)[known.clip(min=0)]  # shape: (L, K)
    options = np.where(is_known[:, None], one_hot, free) & finite  # shape: (L, K)
    whose = "gold tags" if is_known.all() else "known tags"
    whose += " and candidates" if candidates is not None and not is_known.all() else ""
    broken = f"{whose} of row {row} break the constraints at position"
    reach = starts  # shape: (K,), the tags that an allowed, agreeing prefix may end in
    for t in range(length):
        reach = options[t] & (starts if t == 0 else allowed[reach].any(0))
        if reach.any():
            continue
        tag = int(known[t])
        if tag >= 0 and not finite[t, tag]:
            where = f"the emission score of tag {tag} at position {t} is -inf"
            return f"{whose} of row {row} have no path of finite score: {where}"
        if tag >= 0 and t == 0:
            return f"{broken} 0: tag {tag} may not start a sequence"
        if tag >= 0 and known[t - 1] >= 0:
            return f"{broken} {t}: tag {tag} may not follow tag {int(known[t - 1])}"
        return f"no allowed path agrees with the {whose} of row {row} up to position {t}"
    if (reach & ends).any():
        return None
    tag = int(known[-1])
    if tag >= 0:
        return f"{broken} {length - 1}: tag {tag} may not end a sequence"
    return f"no allowed path agrees with the {whose} of row {row} and ends at position {length - 1}"


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


def _scaled_forward(
    emissions: Tensor,
    trans: Tensor,
    start: Tensor,
    end: Tensor,
    mask: Tensor,
    backward: bool = False,
) -> _Forward:
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
    scores.sub_(shifts).exp_().mul_(keep)  # exp(-inf) takes a slow path too: mask after
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
    return _Forward(log_z, moves, starts, messages[:, 0], betas, bad & nonempty)


class _Posteriors(NamedTuple):
    """Token posteriors and the factors of the pairwise ones, time-major, tags before batch."""

    marginals: Tensor  # shape: (T, K, B), zero where masked or for `bad` rows
    alphas: Tensor  # shape: (T + 1, K + 1, B), forward messages, inf and nan zeroed
    betas: Tensor  # shape: (T + 1, K + 1, B), backward messages over each step's total
    bad: Tensor  # shape: (B,), rows whose scaled values may have underflowed


def _scaled_posteriors(state: _Forward, weights: Tensor | None = None) -> _Posteriors:
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
    return _Posteriors(marginals, alphas, betas, bad)


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


class _GoldNll(torch.autograd.Function):
    """log Z minus the score of fully observed tags per sequence (`inf` for a forbidden path).

    The gradient is written out as for `_LogPartition`, less the counts of the scores the gold
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
        nll = _difference(log_z, _path_score(emissions, tags, mask, trans, start, end))
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
    state: _Forward,
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
    post = _scaled_posteriors(state, weights)
    # Batch-first and contiguous, as autograd would copy it to anyway (a transposing copy
    # costs less than an elementwise product writing through the transposition).
    d_emissions = post.marginals.permute(2, 0, 1).contiguous()  # shape: (B, T, K)
    # Pairwise marginals summed over batch and time, the moves to STOP (end scores) too.
    left, right = post.alphas[:-1], post.betas[1:].transpose(1, 2)
    pairs = state.moves * torch.bmm(left, right).sum(0)  # shape: (K + 1, K + 1)
    if bool(post.bad.any()):
        rows = post.bad.nonzero().squeeze(1)
        grads = _reference_grads(emissions[rows], trans, start, end, mask[rows], weights[rows])
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
) -> tuple[Tensor, _Forward]:
    """log Z `(B,)` from the scaled pass, rows flagged there recomputed in log space."""
    state = _scaled_forward(emissions, trans, start, end, mask, backward)
    log_z = state.log_z
    if bool(state.bad.any()):
        rows = state.bad.nonzero().squeeze(1)
        log_z = log_z.clone()
        wide = (x.double() for x in (emissions[rows], trans, start, end))
        log_z[rows] = _reference_log_z(*wide, mask[rows]).to(log_z.dtype)
    return log_z, state


def _log_partition(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor
) -> Tensor:
    """log Z `(B,)`: through the autograd function only when a gradient may be asked for."""
    if torch.is_grad_enabled():
        return _LogPartition.apply(emissions, trans, start, end, mask)
    return _log_z(emissions, trans, start, end, mask, backward=False)[0]


def _gold_nll(
    emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor, mask: Tensor, tags: Tensor
) -> Tensor:
    """`log Z - score(tags)` `(B,)`, `inf` where the path is forbidden; like `_log_partition`."""
    if torch.is_grad_enabled():
        return _GoldNll.apply(emissions, trans, start, end, mask, tags)
    log_z = _log_z(emissions, trans, start, end, mask, backward=False)[0]
    return _difference(log_z, _path_score(emissions, tags, mask, trans, start, end))


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
    """Max-product forward pass keeping only scores, then a backtrace that recomputes each step.

    The forward pass runs through the padding (rows read their score at their last token) and
    stores no back-pointers: a max with indices costs several times a plain max on CPU. The
    backtrace redoes, for the one tag chosen per row, the sums the forward pass maximised, in
    NumPy on the host (small per-step operations cost far less there than in torch); the sums
    are the same floating-point operations, so it picks the same tags, ties to the lowest.
    """
    batch, steps, num_tags = emissions.shape
    if steps == 0:
        return mask.new_full((batch, 0), -1, dtype=torch.long), emissions.new_zeros(batch)
    emissions = emissions.transpose(0, 1)  # shape: (T, B, K)
    scores = emissions.new_empty(steps, batch, num_tags)  # shape: (T, B, K)
    torch.add(start, emissions[0], out=scores[0])
    candidates = emissions.new_empty(num_tags, batch, num_tags)  # shape: (K, B, K), from, -, to
    step_scores, emission_steps = scores.unbind(0), emissions.unbind(0)
    previous_steps = scores.transpose(1, 2).unsqueeze(-1).unbind(0)  # shape: (K, B, 1) each
    moves = trans.unsqueeze(1)  # shape: (K, 1, K)
    for t in range(1, steps):
        torch.add(previous_steps[t - 1], moves, out=candidates)
        torch.amax(candidates, 0, out=step_scores[t])
        step_scores[t].add_(emission_steps[t])
    lengths = mask.sum(1)  # shape: (B,)
    last = (lengths - 1).clamp(min=0)
    best, tag = (scores[last, torch.arange(batch, device=mask.device)] + end).max(-1)
    host = scores.dtype if scores.dtype != torch.bfloat16 else torch.float32
    history = scores.to("cpu", host).numpy()  # shape: (T, B, K)
    into = trans.t().to("cpu", host).numpy()  # shape: (K, K), to, from
    active = mask.t().cpu().numpy()  # shape: (T, B)
    current = tag.cpu().numpy()  # shape: (B,)
    path = np.empty((steps, batch), dtype=np.int64)  # shape: (T, B)
    for t in range(steps - 1, 0, -1):
        path[t] = current
        np.copyto(current, (history[t - 1] + into[current]).argmax(1), where=active[t])
    path[0] = current
    paths = torch.from_numpy(path.T).to(mask.device).masked_fill(~mask, -1)  # shape: (B, T)
    return paths, torch.where(lengths > 0, best, best.new_zeros(()))
