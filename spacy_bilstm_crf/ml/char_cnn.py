"""A character CNN over each whole word (Ma and Hovy, 2016), as a feature layer for the tagger.

spaCy's `CharacterEmbed` sees a fixed number of bytes from each end of a word; this layer reads
every byte of words up to `max_bytes` long (longer ones keep their first and last halves), so
that the morphology of unseen names (`-ski`, `-ford`, `Mc-`) reaches the BiLSTM. `CharCNN`
(`nn/char_cnn.py`) is plain PyTorch over byte ids; `build_char_cnn` turns Docs into those ids
and wraps it for thinc.
"""

from collections.abc import Callable, Sequence

import numpy
from spacy.tokens import Doc
from thinc.api import ArgsKwargs, Model, xp2torch
from thinc.types import Floats2d, Ints2d

from ..nn.char_cnn import PAD, CharCNN
from .torch_wrapper import torch_wrapper

__all__ = ["PAD", "CharCNN", "build_char_cnn", "word_bytes"]


def word_bytes(words: Sequence[str], max_bytes: int) -> numpy.ndarray:
    """`(len(words), max_bytes)` byte ids of each word's UTF-8 text, PAD-filled; a longer word
    keeps its first `max_bytes // 2` and last `max_bytes - max_bytes // 2` bytes.

    spaCy's `Doc.to_utf8_array` clips words the same way but interleaves the two ends (0, -1,
    1, -2, ...), which would break the neighbourhoods that the convolution reads.
    """
    ids = numpy.zeros((len(words), max_bytes), dtype="int64")
    head = max_bytes // 2
    for i, word in enumerate(words):
        data = word.encode("utf8")
        if len(data) > max_bytes:
            data = data[:head] + data[len(data) - (max_bytes - head) :]
        ids[i, : len(data)] = numpy.frombuffer(data, dtype=numpy.uint8).astype("int64") + 1
    return ids


def build_char_cnn(
    width: int, char_dim: int = 32, kernel: int = 3, max_bytes: int = 20, dropout: float = 0.0
) -> Model[list[Doc], list[Floats2d]]:
    """Docs -> `width` CNN features per token, from the bytes of each token's text."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
    cnn = torch_wrapper(CharCNN(width, char_dim, kernel, dropout), convert_inputs=_ids_to_torch)
    return Model(
        "char_cnn",
        _forward,
        layers=[cnn],
        dims={"nO": width},
        attrs={"max_bytes": max_bytes},
    )


def _ids_to_torch(model: Model, ids: Ints2d, is_train: bool) -> tuple[ArgsKwargs, Callable]:
    return ArgsKwargs(args=(xp2torch(ids),), kwargs={}), lambda d_ids: []


def _forward(model: Model, docs: list[Doc], is_train: bool) -> tuple[list[Floats2d], Callable]:
    max_bytes = model.attrs["max_bytes"]
    lengths = [len(doc) for doc in docs]
    words = [token.text for doc in docs for token in doc]
    if not words:
        return [model.ops.alloc2f(0, model.get_dim("nO")) for _ in docs], lambda d_out: []
    ids = model.ops.asarray(word_bytes(words, max_bytes), dtype="int64")
    features, backprop_cnn = model.layers[0](ids, is_train)
    out = model.ops.unflatten(features, model.ops.asarray1i(lengths))

    def backprop(d_out: list[Floats2d]) -> list:
        backprop_cnn(model.ops.flatten(d_out, ndim_if_empty=2))
        return []

    return out, backprop
