"""The BiRNN over length buckets: the same states and gradients as torch's packed sequences."""

import numpy
import pytest
import torch

from spacy_bilstm_crf.nn.bilstm import BiLSTMTagger
from spacy_bilstm_crf.nn.layout import bucket_layout


def _runs(grid: torch.Tensor, step: int, lengths: list[int]) -> list[int]:
    """Check that each row's real cells are one sequence's token indices, in order (`step` 1)
    or reversed (`step` -1), and the rest is padding (index 0); return the rows' lengths."""
    starts = list(numpy.cumsum(lengths) - lengths)
    found = []
    for row in grid.tolist():
        if step == 1:
            length = lengths[starts.index(row[0])]
            assert row[:length] == list(range(row[0], row[0] + length))
        else:
            sequence = max(i for i, start in enumerate(starts) if start <= row[0])
            length = lengths[sequence]
            assert row[0] == starts[sequence] + length - 1
            assert row[:length] == list(range(row[0], row[0] - length, -1))
        assert all(cell == 0 for cell in row[length:])
        found.append(length)
    return found


@pytest.mark.parametrize("lengths", [[3, 7, 1, 12, 5, 5], [1], [40, 1, 1, 1, 39, 2, 17]])
def test_layout_holds_every_sequence_once_per_direction(lengths: list[int]) -> None:
    layout = bucket_layout(numpy.array(lengths))
    total = sum(lengths)
    for grids, rows, step in (
        (layout.forward, layout.forward_rows, 1),
        (layout.reverse, layout.reverse_rows, -1),
    ):
        found = [length for grid in grids for length in _runs(grid, step, lengths)]
        assert sorted(found) == sorted(lengths)
        stacked = torch.cat([grid.flatten() for grid in grids])
        assert stacked[rows].tolist() == list(range(total))  # the way back to token order
        for grid in grids:  # each bucket's padding stays within its share
            assert grid.numel() <= 1.25 * sum(_runs(grid, step, lengths))


def test_bad_lengths_are_named() -> None:
    with pytest.raises(ValueError, match="positive"):
        bucket_layout(numpy.array([3, 0]))
    with pytest.raises(ValueError, match="positive"):
        bucket_layout(numpy.array([], dtype="int64"))


@pytest.mark.parametrize("rnn,depth", [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)])
def test_bucketed_states_and_gradients_equal_packed_ones(rnn: str, depth: int) -> None:
    torch.manual_seed(0)
    module = BiLSTMTagger(6, 10, 4, depth=depth, rnn=rnn).double().eval()
    lengths = torch.tensor([3, 7, 1, 12, 5, 5, 2])
    tokens = torch.randn(int(lengths.sum()), 6, dtype=torch.float64, requires_grad=True)
    bucketed = module.encode(tokens, lengths)
    packed = module._encode_packed(tokens, lengths)
    assert torch.allclose(bucketed, packed, atol=1e-12)
    weights = torch.randn_like(bucketed)
    grads = torch.autograd.grad((bucketed * weights).sum(), [tokens, *module.rnn.parameters()])
    expected = torch.autograd.grad((packed * weights).sum(), [tokens, *module.rnn.parameters()])
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-12)


def test_threads_give_the_same_states() -> None:
    torch.manual_seed(0)
    module = BiLSTMTagger(6, 10, 4).eval()
    lengths = torch.tensor([30, 2, 17, 17, 5, 1, 9])
    tokens = torch.randn(int(lengths.sum()), 6)
    one = module.encode(tokens, lengths)
    module.threads = 2
    assert torch.equal(module.encode(tokens, lengths), one)
