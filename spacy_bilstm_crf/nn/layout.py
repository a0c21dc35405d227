"""Where the tokens of concatenated sequences go in length buckets padded for a recurrence.

Sequences are sorted by length and grouped so that each bucket's padding stays a small share
of its tokens; a bucket is a `(B_b, T_b)` grid of token indices. The reverse direction reads
each sequence backwards from its last token, so its grid holds each row reversed. Padding
always comes after a row's real tokens, so a recurrence never reads it before them: it may
hold any token (index 0), and it changes neither the real states nor their gradients.
`forward_rows` and `reverse_rows` say where each token's state lands when the buckets'
outputs are concatenated, so that one `index_select` per direction brings them back to token
order.

NumPy only: the indices are computed on the host and moved to torch once.
"""

from typing import NamedTuple

import numpy
import torch
from torch import Tensor

# A bucket may hold up to this share of padding: more buckets mean more recurrence steps.
SLACK = 0.25


class Layout(NamedTuple):
    """Bucket grids of token indices, per direction, and the way back to token order."""

    forward: list[Tensor]  # each shape: (B_b, T_b), token indices, 0 for padding
    reverse: list[Tensor]  # each shape: (B_b, T_b), the same rows reversed
    forward_rows: Tensor  # shape: (N,), row of each token in the stacked forward outputs
    reverse_rows: Tensor  # shape: (N,), the same for the reverse outputs


def bucket_layout(lengths: numpy.ndarray, slack: float = SLACK) -> Layout:
    """The layout of sequences with these positive `lengths`, in the order given."""
    lengths = numpy.asarray(lengths, dtype="int64")
    if lengths.ndim != 1 or not len(lengths) or (lengths < 1).any():
        raise ValueError(f"lengths must be a non-empty list of positive ints, got {lengths}")
    total = int(lengths.sum())
    starts = numpy.cumsum(lengths) - lengths  # shape: (B,)
    forward, reverse = [], []
    forward_rows = numpy.empty(total, dtype="int64")
    reverse_rows = numpy.empty(total, dtype="int64")
    offset = 0
    for members in _buckets(lengths, slack):
        sizes = lengths[members]  # shape: (B_b,)
        steps = int(sizes.max())
        positions = numpy.arange(steps)  # shape: (T_b,)
        real = positions < sizes[:, None]  # shape: (B_b, T_b)
        grid = starts[members][:, None] + positions  # shape: (B_b, T_b)
        backwards = starts[members][:, None] + sizes[:, None] - 1 - positions
        forward.append(torch.from_numpy(numpy.where(real, grid, 0)))
        reverse.append(torch.from_numpy(numpy.where(real, backwards, 0)))
        cells = offset + numpy.arange(real.size).reshape(real.shape)  # shape: (B_b, T_b)
        forward_rows[grid[real]] = cells[real]
        reverse_rows[backwards[real]] = cells[real]
        offset += real.size
    return Layout(forward, reverse, torch.from_numpy(forward_rows), torch.from_numpy(reverse_rows))


def _buckets(lengths: numpy.ndarray, slack: float) -> list[numpy.ndarray]:
    """Sequence indices grouped longest first, each group padded to its longest by at most
    `slack` times its tokens."""
    order = numpy.argsort(-lengths, kind="stable")
    groups, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        end, tokens = start + 1, longest
        while end < len(order):
            grown = tokens + int(lengths[order[end]])
            if longest * (end - start + 1) > (1 + slack) * grown:
                break
            tokens, end = grown, end + 1
        groups.append(order[start:end])
        start = end
    return groups
