"""A character CNN over the byte ids of words (Ma and Hovy, 2016), in plain PyTorch."""

from torch import Tensor, nn

# Byte ids are the UTF-8 byte plus one; 0 pads words shorter than the longest.
PAD = 0
NUM_SYMBOLS = 257


class CharCNN(nn.Module):
    """Byte embeddings, one convolution and a max over each word's positions.

    `forward` takes `(N, L)` byte ids (PAD where a word has no byte) and returns `(N, width)`
    features; a word with no byte at all gets zeros.
    """

    def __init__(
        self, width: int, char_dim: int = 32, kernel: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if width < 1 or char_dim < 1:
            raise ValueError(f"width and char_dim must be positive, got {width} and {char_dim}.")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}.")
        self.embed = nn.Embedding(NUM_SYMBOLS, char_dim, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(char_dim, width, kernel, padding=kernel // 2)

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != PAD
        chars = self.dropout(self.embed(ids)).transpose(1, 2)
        scores = self.conv(chars).masked_fill(~mask.unsqueeze(1), float("-inf"))
        best = scores.max(dim=2).values
        return best.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)
