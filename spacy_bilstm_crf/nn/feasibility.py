"""Why no allowed path agrees with what is known, said in errors that name rows and positions.

Two kinds of knowledge reach the CRF: tags (gold or partial, for `nll`) and per-token tag
sets (`candidates`, for every operation). When no path that the tag scheme allows agrees with
them, the CRF's result would be `-inf`, NaN or empty; it raises instead, and these helpers,
run on the host only for the rows concerned, find the positions to name. NumPy only.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..tags import Constraints

BoolMatrix = Tensor | Sequence[Sequence[bool]]
# A conflict this short names each position's allowed tags in the message.
_SPELLED_OUT = 6


class ConstraintError(ValueError):
    """Per-token tag sets (`candidates`) that no allowed path satisfies.

    `row` is the sequence, `first..last` (inclusive) the shortest stretch of its positions
    whose tag sets alone already leave no allowed path, so that a caller can name the tokens.
    """

    def __init__(self, message: str, row: int, first: int, last: int) -> None:
        super().__init__(message)
        self.row, self.first, self.last = row, first, last


def constraint_error(
    rows: list[int],
    candidates: Tensor,
    emissions: Tensor,
    mask: Tensor,
    rules: tuple[Tensor, Tensor, Tensor],
) -> ConstraintError | None:
    """The error for the first of `rows` whose `candidates` `(B, T, K)` leave no allowed path
    (emission scores of `-inf` count as ruled out), or None when every row has one."""
    allowed, starts, ends = (x.cpu().numpy() for x in rules)
    found = []
    for row in rows:
        length = int(mask[row].sum())
        if not length:
            continue
        options = (candidates[row, :length] & (emissions[row, :length] > float("-inf"))).cpu()
        stretch = shortest_conflict(options.numpy(), allowed, starts, ends)
        if stretch is not None:
            found.append((row, *stretch, options.numpy()))
    if not found:
        return None
    row, first, last, options = found[0]
    where = f"positions {first}..{last}" if last > first else f"position {first}"
    message = f"The tag constraints of row {row} leave no allowed path through {where}"
    if last - first < _SPELLED_OUT:
        sets = [f"{t}: {np.flatnonzero(options[t]).tolist()}" for t in range(first, last + 1)]
        message += f" (allowed tag ids at each position: {'; '.join(sets)})"
    if last == len(options) - 1 and not (options[last] & ends).any():
        message += "; no tag allowed at the last position may end a sequence"
    if len(found) > 1:
        message += f" ({len(found)} rows in all: {[item[0] for item in found]})"
    return ConstraintError(message + ".", row, first, last)


def shortest_conflict(
    options: np.ndarray, allowed: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[int, int] | None:
    """The shortest stretch `(first, last)` of positions that ends where allowed paths run out,
    whose tag sets `options` `(L, K)` alone leave no allowed path, or None when a path exists.

    Start and end constraints count only for a stretch at the sequence's start or end.
    """
    length = len(options)
    dead = _first_dead(options, allowed, starts, ends, 0, length + 1)
    if dead is None:
        return None
    last = min(dead, length - 1)
    stop = last + 1 if last < length - 1 else length + 1  # past the end: the end counts
    for first in range(last, -1, -1):
        if _first_dead(options, allowed, starts, ends, first, stop) is not None:
            return first, last
    return 0, last


def _first_dead(
    options: np.ndarray,
    allowed: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    first: int,
    stop: int,
) -> int | None:
    """Follow the tags reachable from position `first` on (any tag there, or only start tags at
    position 0) through `options`, up to `stop`; the first position where none is left (`L` if
    the sequence's end is reached and no tag there may end it), or None."""
    length = len(options)
    reach = options[first] & (starts if first == 0 else True)  # shape: (K,)
    for t in range(first, min(stop, length)):
        if t > first:
            reach = options[t] & allowed[reach].any(0)
        if not reach.any():
            return t
    if stop > length and not (reach & ends).any():
        return length
    return None


def infeasible_reason(
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


def constraint_tensors(
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
