"""A linear-chain CRF in plain PyTorch: exact, batched, constrained and partial-label aware.

Shapes follow one convention: `B` sequences, `T` time steps, `K` tags. Inputs are batch-first,
masks are bool and left-aligned, and rows may have length zero (their log partition is 0 and
their best path is empty).

Every operation takes optional per-token constraints, `candidates`: a bool `(B, T, K)` tensor
of the tags each token may take (batched like the mask; padding is ignored). Results are then
exact under them: the best path, marginals, k best paths, span and path probabilities among
the allowed paths that satisfy them, with the log partition of those paths. The tags ruled out
get emission scores of `-inf`, which every pass handles as probability zero, so a constrained
call costs one masked fill more. Constraints that no allowed path satisfies raise a
`ConstraintError` naming the row and positions, never a `-inf`, NaN or empty result.
`tag_sets.py` in the package builds them from spans.

This module is the CRF's public face: its parameters and constraints, checks of its inputs
with errors that name the row and position, and the operations users call. The numerical
passes live beside it: `forward_backward.py` (log partition, posteriors, gradients),
`viterbi.py` (best path), `nbest.py` (k best paths) and `span_probs.py` (span and piece
probabilities); `feasibility.py` finds what to name when no path is left.
"""

import operator

import torch
from torch import Tensor, nn

from ..tags import Constraints
from . import forward_backward, span_probs
from .feasibility import (
    BoolMatrix,
    ConstraintError,
    constraint_error,
    constraint_tensors,
    infeasible_reason,
)
from .nbest import kbest_viterbi
from .viterbi import viterbi

INFEASIBLE = ("raise", "inf")
NEG_INF = float("-inf")

__all__ = ["CRF", "ConstraintError"]


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
        moves, start, end = constraint_tensors(num_tags, allowed)
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
            free = free & self._check_candidates(emissions, candidates)
        allowed_tags = torch.where(unknown.unsqueeze(-1), free, observed)
        clamped = emissions.masked_fill(~allowed_tags, float("-inf"))
        log_z_observed = forward_backward.log_partition(clamped, trans, start, end, mask)
        nll = forward_backward.difference(log_z, log_z_observed)
        if infeasible == "raise":
            self._raise_if_infeasible(nll, emissions, tags, mask, candidates)
        return nll

    def log_partition(
        self, emissions: Tensor, mask: Tensor | None = None, candidates: Tensor | None = None
    ) -> Tensor:
        """Log of the sum of exp-scores over all allowed paths (that satisfy `candidates`),
        shape `(B,)`."""
        mask = self._check(emissions, mask)
        scores = self._restrict(emissions, mask, candidates)
        trans, start, end = self._scores(emissions.dtype)
        log_z = forward_backward.log_partition(scores, trans, start, end, mask)
        self._raise_if_no_path(log_z, emissions, mask, candidates)
        return log_z

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unnormalised score of fully known `tags` per sequence, shape `(B,)`."""
        mask = self._check(emissions, mask)
        tags = self._check_tags(tags, mask)
        if bool(((tags == -1) & mask).any()):
            raise ValueError("score() needs every tag known; use nll() for partial labels.")
        return forward_backward.path_score(emissions, tags, mask, *self._scores(emissions.dtype))

    def marginals(
        self, emissions: Tensor, mask: Tensor | None = None, candidates: Tensor | None = None
    ) -> Tensor:
        """Posterior probability of each tag at each position, shape `(B, T, K)`, given
        `candidates` when given.

        Rows sum to one at unmasked positions and are zero elsewhere.
        """
        mask = self._check(emissions, mask)
        trans, start, end = (s.detach() for s in self._scores(emissions.dtype))
        raw = emissions.detach()
        emissions = self._restrict(raw, mask, candidates)
        state = forward_backward.scaled_forward(emissions, trans, start, end, mask, backward=True)
        post = forward_backward.scaled_posteriors(state)
        posteriors = post.marginals  # shape: (T, K, B)
        if bool(post.bad.any()):
            rows = post.bad.nonzero().squeeze(1)
            if candidates is not None:  # rows without a path are among these
                wide = (x.double() for x in (emissions[rows], trans, start, end))
                log_z = forward_backward.reference_log_z(*wide, mask[rows])
                self._raise_if_no_path(log_z, raw[rows], mask[rows], candidates[rows], rows)
            grads = forward_backward.reference_grads(
                emissions[rows], trans, start, end, mask[rows], None
            )
            posteriors[:, :, rows] = grads[0].permute(1, 2, 0)
        return posteriors.permute(2, 0, 1)

    @torch.no_grad()
    def decode(
        self, emissions: Tensor, mask: Tensor | None = None, candidates: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Viterbi: the best path per sequence (that satisfies `candidates`) and its score.

        Returns `paths` `(B, T)` long, padded with `-1` where masked, and `scores` `(B,)`.
        Use `to_lists` for ragged Python lists.
        """
        mask = self._check(emissions, mask)
        scores = self._restrict(emissions.detach(), mask, candidates)
        paths, best = viterbi(scores, mask, *self._scores(emissions.dtype))
        self._raise_if_no_path(best, emissions, mask, candidates)
        return paths, best

    @torch.no_grad()
    def nbest(
        self,
        emissions: Tensor,
        mask: Tensor | None = None,
        *,
        k: int,
        candidates: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """k-best Viterbi: the `k` best allowed paths per sequence (that satisfy `candidates`)
        and their scores, best first.

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
        moves = self._scores(emissions.dtype)
        scores = self._restrict(emissions.detach(), mask, candidates)
        if k == 1:  # the same paths and scores, at the cost of a plain Viterbi
            paths, best = viterbi(scores, mask, *moves)
            paths, best = paths.unsqueeze(1), best.unsqueeze(1)
        else:
            paths, best = kbest_viterbi(scores, mask, *moves, k)
        self._raise_if_no_path(best[:, 0], emissions, mask, candidates)
        return paths, best

    @torch.no_grad()
    def path_probs(
        self,
        emissions: Tensor,
        scores: Tensor,
        mask: Tensor | None = None,
        candidates: Tensor | None = None,
    ) -> Tensor:
        """Probabilities `exp(score - log Z)` of paths with these scores, shaped like `scores`;
        with `candidates`, of paths that satisfy them, given them (`log Z` over those paths).

        `scores` is `(B,)` (from `decode`) or `(B, k)` (from `nbest`); `-inf` gives 0. Where
        rounding would make a row's probabilities sum past one, they are scaled down to one.
        """
        log_z = self.log_partition(emissions, mask, candidates)  # shape: (B,)
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
        candidates: Tensor | None = None,
    ) -> Tensor:
        """The probability `(E,)` that span `e` has exactly its tags: sequence `rows[e]`,
        tokens from `starts[e]` on tagged `tags[e]` (`(E, L)` long, padded with -1), and, when
        `after[e]` is a tag id, the token after the span not tagged `after[e]` (the tag that
        would continue an entity); given `candidates` when given. One forward-backward pass
        for all spans (`span_probs.py`)."""
        mask = self._check(emissions, mask)
        if after is None:
            after = torch.full_like(rows, -1)
        if not (rows.shape == starts.shape == after.shape == tags.shape[:1]):
            raise ValueError("rows, starts and after must have one entry per row of tags.")
        lengths = (tags >= 0).sum(1)
        if bool((starts < 0).any() | (starts + lengths > mask.sum(1)[rows]).any()):
            raise ValueError("every span must lie inside its sequence.")
        trans, start, end = self._scores(emissions.dtype)
        scores = self._restrict(emissions, mask, candidates)
        messages = span_probs.forward_backward(scores, mask, trans, start, end)
        self._raise_if_no_path(messages.log_z, emissions, mask, candidates)
        log_probs = span_probs.span_log_probs(
            messages, scores, trans, end, rows, starts, tags, after
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
        candidates: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The `k` most probable labellings of pieces of sequences (such as the sentences of a
        document) and their log probabilities under each whole sequence's CRF, best first:
        paths `(P, k, L)` padded with -1, log probabilities `(P, k)`, `-inf` where a piece has
        fewer than `k`. Piece `p` is tokens `starts[p]..ends[p]-1` of sequence `rows[p]`. With
        `candidates`, labellings and probabilities given them."""
        mask = self._check(emissions, mask)
        if k < 1:
            raise ValueError(f"piece_nbest needs k >= 1, got k={k}.")
        if bool((starts < 0).any() | (ends <= starts).any() | (ends > mask.sum(1)[rows]).any()):
            raise ValueError("every piece must be non-empty and lie inside its sequence.")
        trans, start, end = self._scores(emissions.dtype)
        scores = self._restrict(emissions, mask, candidates)
        messages = span_probs.forward_backward(scores, mask, trans, start, end)
        self._raise_if_no_path(messages.log_z, emissions, mask, candidates)
        return span_probs.piece_nbest(messages, scores, trans, start, rows, starts, ends, k)

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

    def _restrict(self, emissions: Tensor, mask: Tensor, candidates: Tensor | None) -> Tensor:
        """`emissions` with the tags `candidates` rules out at `-inf`. Padding may get `-inf`
        too: every pass leaves it out (by the mask) or reads nothing from it."""
        if candidates is None:
            return emissions
        return torch.where(self._check_candidates(emissions, candidates), emissions, NEG_INF)

    def _raise_if_no_path(
        self,
        best: Tensor,
        emissions: Tensor,
        mask: Tensor,
        candidates: Tensor | None,
        rows: Tensor | None = None,
    ) -> None:
        """Raise a `ConstraintError` for rows whose `candidates` leave no allowed path: those
        whose best score or log partition `best` `(B,)` is `-inf` or NaN (`rows`: their
        indices in the whole batch). The common case costs one comparison."""
        if candidates is None or bool((best > NEG_INF).all()):  # empty rows have 0
            return
        suspect = ~(best > NEG_INF) & mask.any(1)  # shape: (B,), -inf or NaN
        rules = (self.allowed, self.allowed_start, self.allowed_end)
        local = suspect.nonzero().squeeze(1).tolist()
        error = constraint_error(local, candidates, emissions.detach(), mask, rules)
        if error is not None and rows is not None:  # name the row in the whole batch
            row = int(rows[error.row])
            message = str(error).replace(f"row {error.row} ", f"row {row} ", 1)
            error = ConstraintError(message, row, error.first, error.last)
        if error is not None:
            raise error

    def _check_candidates(self, emissions: Tensor, candidates: Tensor) -> Tensor:
        if candidates.shape != emissions.shape or candidates.dtype != torch.bool:
            raise ValueError(
                f"candidates must be a bool tensor of shape {tuple(emissions.shape)}, "
                f"got {candidates.dtype} {tuple(candidates.shape)}."
            )
        return candidates

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
            reason = infeasible_reason(row, known, finite, allowed_tags, *rules)
            if reason is not None:
                reasons[row] = reason
        if reasons:
            rows = list(reasons)
            more = f" ({len(rows)} rows in all: {rows})" if len(rows) > 1 else ""
            raise ValueError(
                f"{reasons[rows[0]]}{more}; pass infeasible='inf' to nll for an infinite loss "
                "instead."
            )
