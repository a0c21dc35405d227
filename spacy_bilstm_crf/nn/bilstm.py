"""The recurrent half of the tagger: token vectors in, tag scores out, plus its loss and decoder.

Pure PyTorch. The module owns its CRF, so that every trainable tensor (RNN, projection,
transitions, loss weights) lives in one `nn.Module` and is stepped together by whatever
optimizer wraps it. Variants from the literature are options: a GRU instead of the LSTM, a
per-token softmax head instead of the CRF, and the CRF loss plus token cross-entropy combined
with learned uncertainty weights.

On CPU each direction of each layer runs as its own fused recurrence over length buckets
(`layout.py`), because the backward pass of torch's packed-sequence RNN on CPU allocates a
full-size gradient for every time step (quadratic in the sequence length: 60% of a training
step). The buckets and directions are independent tasks, run on `threads` threads. On GPUs
cuDNN's packed kernels are used as they are.
"""

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..tags import Constraints
from .crf import CRF
from .layout import Layout, bucket_layout
from .parallel import run_tasks

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}
HEADS = ("crf", "softmax")
LOSSES = ("crf", "crf+ce")
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class BiLSTMTagger(nn.Module):
    """Packed bidirectional RNN, a linear layer to tag scores, and a CRF (or softmax) head.

    `forward` takes the tokens of several sequences concatenated, `(N, input_size)`, and their
    lengths (all positive, summing to `N`), and returns emission scores `(N, num_tags)` in the
    same order. Padding is internal and never reaches the RNN (packed sequences). `loss` and
    `decode` take the scores padded batch-first, `(B, T, K)`, with a bool mask.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_tags: int,
        depth: int = 1,
        dropout: float = 0.0,
        allowed: Constraints | None = None,
        rnn: str = "lstm",
        head: str = "crf",
        loss: str = "crf",
    ) -> None:
        super().__init__()
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even (two directions), got {hidden_size}.")
        _check_choice("rnn", rnn, tuple(RNNS))
        _check_choice("head", head, HEADS)
        _check_choice("loss", loss, LOSSES)
        if head == "softmax" and loss != "crf":
            raise ValueError("loss='crf+ce' needs head='crf'; the softmax head uses cross-entropy.")
        self.head, self.loss_kind = head, loss
        self.dropout = nn.Dropout(dropout)
        self.rnn = RNNS[rnn](
            input_size,
            hidden_size // 2,
            num_layers=depth,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if depth > 1 else 0.0,
        )
        self.projection = nn.Linear(hidden_size, num_tags)
        self.crf = CRF(num_tags, allowed)
        # Threads for the independent recurrences of a layer; not saved (the pipe sets it).
        self.threads = 1
        if loss == "crf+ce":
            # The s_i of the uncertainty weighting: L_i counts 0.5 / s_i^2 * L_i + log(1 + s_i^2).
            self.loss_scales = nn.Parameter(torch.ones(2))

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Emission scores for concatenated sequences; `lengths` is a CPU long tensor."""
        hidden = self.encode(self.dropout(tokens), lengths)
        return self.projection(self.dropout(hidden))  # shape: (N, K)

    def encode(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """BiRNN states `(N, hidden_size)` of concatenated sequences, both directions."""
        if tokens.device.type != "cpu":
            return self._encode_packed(tokens, lengths)
        layout = bucket_layout(lengths.numpy())
        states = tokens
        for layer in range(self.rnn.num_layers):
            if layer:
                states = nn.functional.dropout(states, self.rnn.dropout, self.training)
            states = self._layer(states, layout, layer)
        return states

    def _layer(self, tokens: Tensor, layout: Layout, layer: int) -> Tensor:
        """One bidirectional layer: each bucket and direction a fused recurrence."""
        tasks = [
            partial(self._direction, tokens, index, layer, reverse)
            for reverse, indexes in ((False, layout.forward), (True, layout.reverse))
            for index in indexes
        ]
        outputs = run_tasks(tasks, self.threads)  # each shape: (B_b, T_b, H / 2)
        half = len(layout.forward)
        forward = torch.cat([out.flatten(0, 1) for out in outputs[:half]])
        reverse = torch.cat([out.flatten(0, 1) for out in outputs[half:]])
        return torch.cat(
            [
                forward.index_select(0, layout.forward_rows),
                reverse.index_select(0, layout.reverse_rows),
            ],
            dim=1,
        )  # shape: (N, H)

    def _direction(self, tokens: Tensor, index: Tensor, layer: int, reverse: bool) -> Tensor:
        """The RNN of one direction of `layer` over one bucket, `index` `(B_b, T_b)` into the
        rows of `tokens`; reversed buckets hold each sequence reversed (see `layout.py`)."""
        inputs = tokens.index_select(0, index.flatten()).view(*index.shape, -1)  # (B_b, T_b, D)
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        weights = [getattr(self.rnn, name + suffix) for name in _WEIGHTS]
        start = inputs.new_zeros(1, index.shape[0], self.rnn.hidden_size)
        if isinstance(self.rnn, nn.LSTM):
            return torch.lstm(
                inputs, (start, start), weights, True, 1, 0.0, self.training, False, True
            )[0]
        return torch.gru(inputs, start, weights, True, 1, 0.0, self.training, False, True)[0]

    def _encode_packed(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """The same states through a packed sequence, for cuDNN."""
        batch, steps = lengths.shape[0], int(lengths.max())
        positions = torch.arange(steps, device=tokens.device)
        mask = lengths.to(tokens.device).unsqueeze(1) > positions  # shape: (B, T)
        padded = tokens.new_zeros(batch, steps, tokens.shape[1])  # shape: (B, T, D)
        padded[mask] = tokens
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        # cuDNN wants the weights in one block; after a device move or a load they may not be,
        # and it would then copy them on every call.
        self.rnn.flatten_parameters()
        hidden, _ = self.rnn(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=steps)
        return hidden[mask]  # shape: (N, H)

    def loss(self, scores: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """The head's training loss summed over the batch; tags of `-1` are unknown."""
        if self.head == "softmax":
            return token_cross_entropy(scores, tags, mask)
        nll = self.crf.nll(scores, tags, mask).sum()
        if self.loss_kind == "crf":
            return nll
        return uncertainty_weighted(
            torch.stack([nll, token_cross_entropy(scores, tags, mask)]), self.loss_scales
        )

    def decode(
        self, scores: Tensor, mask: Tensor, candidates: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Best tag ids `(B, T)` (padded with -1), and whether each row breaks the constraints.

        The CRF decodes within the constraints (and the per-token `candidates`, bool `(B, T,
        K)`, when given); the softmax head takes each token's argmax among its candidates,
        which can give sequences the tag scheme does not allow (the caller repairs them).
        """
        if self.head == "crf":
            paths, _ = self.crf.decode(scores, mask, candidates)
        else:
            if candidates is not None:
                empty = ~candidates.any(-1) & mask  # shape: (B, T)
                if bool(empty.any()):
                    row, position = (int(i) for i in empty.nonzero()[0])
                    raise ValueError(f"The candidates of row {row} allow no tag at {position}.")
                scores = scores.masked_fill(~candidates, float("-inf"))
            paths = scores.argmax(-1).masked_fill(~mask, -1)  # shape: (B, T)
        return paths, ~allowed_paths(self.crf, paths, mask)


def allowed_paths(crf: CRF, paths: Tensor, mask: Tensor) -> Tensor:
    """Whether each padded path `(B, T)` obeys the CRF's constraints, shape `(B,)`."""
    tags = paths.masked_fill(~mask, 0)  # shape: (B, T)
    lengths = mask.sum(1)  # shape: (B,)
    moves = crf.allowed[tags[:, :-1], tags[:, 1:]] | ~mask[:, 1:]  # shape: (B, T - 1)
    last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # shape: (B,)
    ends = crf.allowed_start[tags[:, 0]] & crf.allowed_end[last]  # shape: (B,)
    return moves.all(1) & (ends | (lengths == 0))


def token_cross_entropy(scores: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
    """Summed per-token cross-entropy of `scores` `(B, T, K)`, skipping masked and -1 tags."""
    return cross_entropy(scores[mask], tags[mask], ignore_index=-1, reduction="sum")


def uncertainty_weighted(losses: Tensor, scales: Tensor) -> Tensor:
    """`sum_i 0.5 / s_i^2 * L_i + log(1 + s_i^2)`: losses on different scales, learned weights."""
    variances = scales.pow(2)  # shape: (n,)
    return (0.5 * losses / variances + torch.log1p(variances)).sum()


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
