"""The BiLSTM half of the tagger: token vectors in, CRF emission scores out. Pure PyTorch.

The module owns its CRF, so that every trainable tensor (LSTM, projection and transitions) lives
in one `nn.Module` and is stepped together by whatever optimizer wraps it.
"""

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .crf import CRF
from .tags import Constraints


class BiLSTMTagger(nn.Module):
    """Packed bidirectional LSTM, a linear layer to tag scores, and a CRF over those scores.

    `forward` takes the tokens of several sequences concatenated, `(N, input_size)`, and their
    lengths (all positive, summing to `N`), and returns emission scores `(N, num_tags)` in the
    same order. Padding is internal and never reaches the LSTM (packed sequences).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_tags: int,
        depth: int = 1,
        dropout: float = 0.0,
        allowed: Constraints | None = None,
    ) -> None:
        super().__init__()
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even (two directions), got {hidden_size}.")
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            input_size,
            hidden_size // 2,
            num_layers=depth,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if depth > 1 else 0.0,
        )
        self.projection = nn.Linear(hidden_size, num_tags)
        self.crf = CRF(num_tags, allowed)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Emission scores for concatenated sequences; `lengths` is a CPU long tensor."""
        batch, steps = lengths.shape[0], int(lengths.max())
        positions = torch.arange(steps, device=tokens.device)
        mask = lengths.to(tokens.device).unsqueeze(1) > positions  # shape: (B, T)
        padded = tokens.new_zeros(batch, steps, tokens.shape[1])  # shape: (B, T, D)
        padded[mask] = tokens
        packed = pack_padded_sequence(
            self.dropout(padded), lengths, batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=steps)
        return self.projection(self.dropout(hidden[mask]))  # shape: (N, K)
