"""A linear-chain CRF in plain PyTorch: exact, batched, constrained and partial-label aware.

Shapes follow one convention: `B` sequences, `T` time steps, `K` tags. Inputs are batch-first,
masks are bool and left-aligned, and rows may have length zero (their log partition is 0 and
their best path is empty).

This module is the CRF's public face: its parameters and constraints, checks of its inputs
with errors that name the row and position, and the operations users call. The numerical
passes live beside it: `forward_backward.py` (log partition, posteriors, gradients),
`viterbi.py` (best path), `nbest.py` (k best paths) and `span_probs.py` (span and piece
probabilities).
"""

import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..tags import Constraints
from . import forward_backward
from .nbest import kbest_viterbi
from .span_probs import piece_nbest, span_log_probs
from .viterbi import viterbi

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
            nll = forward_backward.gold_nll(emissions, trans, start, end, mask, tags)
            if infeasible == "raise":
                self._raise_if_infeasible(nll, emissions, tags, mask, None)
            return nll
        log_z = forward_backward.log_partition(emissions, trans, start, end, mask)
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
        log_z_observed = forward_backward.log_partition(clamped, trans, start, end, mask)
        nll = forward_backward.difference(log_z, log_z_observed)
        if infeasible == "raise":
            self._raise_if_infeasible(nll, emissions, tags, mask, candidates)
        return nll

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log of the sum of exp-scores over all allowed paths, shape `(B,)`."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores(emissions.dtype)
        return forward_backward.log_partition(emissions, trans, start, end, mask)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unnormalised score of fully known `tags` per sequence, shape `(B,)`."""
        mask = self._check(emissions, mask)
        tags = self._check_tags(tags, mask)
        if bool(((tags == -1) & mask).any()):
            raise ValueError("score() needs every tag known; use nll() for partial labels.")
        return forward_backward.path_score(emissions, tags, mask, *self._scores(emissions.dtype))

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Posterior probability of each tag at each position, shape `(B, T, K)`.

        Rows sum to one at unmasked positions and are zero elsewhere.
        """
        mask = self._check(emissions, mask)
        trans, start, end = (s.detach() for s in self._scores(emissions.dtype))
        emissions = emissions.detach()
        state = forward_backward.scaled_forward(emissions, trans, start, end, mask, backward=True)
        post = forward_backward.scaled_posteriors(state)
        posteriors = post.marginals  # shape: (T, K, B)
        if bool(post.bad.any()):
            rows = post.bad.nonzero().squeeze(1)
            grads = forward_backward.reference_grads(
                emissions[rows], trans, start, end, mask[rows], None
            )
            posteriors[:, :, rows] = grads[0].permute(1, 2, 0)
        return posteriors.permute(2, 0, 1)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Viterbi: the best path per sequence and its score.

        Returns `paths` `(B, T)` long, padded with `-1` where masked, and `scores` `(B,)`.
        Use `to_lists` for ragged Python lists.
        """
        mask = self._check(emissions, mask)
        return viterbi(emissions.detach(), mask, *self._scores(emissions.dtype))

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
            paths, best = viterbi(emissions.detach(), mask, *scores)
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
