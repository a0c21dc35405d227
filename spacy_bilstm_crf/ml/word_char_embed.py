"""Token features for the tagger, `spacy-bilstm-crf.WordCharEmbed.v2`: one flat vector per token.

Per token, side by side: hashed embeddings of lexical attributes (NORM, PREFIX, SUFFIX,
SHAPE, as spaCy's `MultiHashEmbed` reads them), embeddings of the first and last UTF-8 bytes
of the word (as spaCy's `CharacterEmbed`), and the vocab's static word vectors. There is no
mixing layer: the BiLSTM's input weights mix them. Everything that depends only on the word
(its bytes, its vector) is computed once per distinct word of the batch, from `Doc.to_array`,
with no Python `Token` objects.

Static vectors are looked up by ORTH, then LOWER (see `static_vectors.py`), and with
`include_static_vectors = null` used when the vocab has some at initialization (`[paths]
vectors`): the default config trains on the base install, and vectors switch on by giving them.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy
from spacy.attrs import IDS, LOWER, ORTH
from spacy.strings import hash_string
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import HashEmbed, Model, glorot_uniform_init, uniform_init
from thinc.types import Floats2d

from .static_vectors import require_width, table_width, word_vectors

# The NORM that word dropout gives a dropped token: one shared "unknown word" embedding.
UNKNOWN_NORM = "<unk>"
# Byte id for "no byte" in the character features, as in `Doc.to_utf8_array`.
NO_BYTE = 255


@registry.architectures("spacy-bilstm-crf.WordCharEmbed.v2")
def build_word_char_embed_v2(
    attrs: list[str],
    rows: list[int],
    widths: list[int],
    char_width: int = 16,
    char_count: int = 8,
    include_static_vectors: bool | None = None,
    vectors_width: int = 0,
    word_dropout: float = 0.0,
) -> Model[list[Doc], list[Floats2d]]:
    """Per-token vectors of `sum(widths) + char_width * char_count` values, plus the static
    vectors: the table's own width, or `vectors_width` through a learned projection.

    `attrs`, `rows` and `widths`: one hashed embedding table per attribute. `char_count`
    bytes of each word (the first and last `char_count / 2`), `char_width` values each (0
    turns them off). `include_static_vectors`: true requires vectors in the vocab, false
    ignores them, null uses them when there are any at initialization. `word_dropout`: in
    training, each token's NORM is replaced by one "unknown" value with this probability, so
    that the model learns to tag words it has no embedding for.
    """
    names = [str(attr).upper() for attr in attrs]
    if not (len(names) == len(rows) == len(widths)):
        raise ValueError(
            f"attrs, rows and widths must have one entry each, got {attrs}, {rows}, {widths}"
        )
    unknown = [name for name in names if name not in IDS]
    if unknown:
        raise ValueError(f"Unknown token attributes {unknown}: use names such as NORM or SHAPE")
    if min(rows, default=1) < 1 or min(widths, default=1) < 1:
        raise ValueError(f"rows and widths must be positive, got {rows} and {widths}")
    if char_width < 0 or char_count < 0 or (char_width == 0) != (char_count == 0):
        raise ValueError(
            "char_width and char_count must both be positive or both 0, "
            f"got {char_width} and {char_count}"
        )
    if not 0.0 <= word_dropout < 1.0:
        raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
    if word_dropout and "NORM" not in names:
        raise ValueError(f"word_dropout replaces the NORM attribute, which attrs {attrs} lack")
    if vectors_width < 0 or (vectors_width and include_static_vectors is False):
        raise ValueError(
            f"vectors_width must be 0 (raw vectors) or positive with vectors, got {vectors_width}"
        )
    tables = [
        HashEmbed(width, size, seed=8 + i, dropout=0.0, initializer=_embedding_init)
        for i, (width, size) in enumerate(zip(widths, rows))
    ]
    return Model(
        "word_char_embed",
        _forward,
        init=_init,
        layers=tables,
        params={"E": None, "W": None},
        dims={"nO": None, "nC": char_count, "nM": char_width, "nV": None, "nP": vectors_width},
        attrs={
            "columns": [ORTH, LOWER, *(IDS[name] for name in names)],
            "norm_column": 2 + names.index("NORM") if "NORM" in names else -1,
            "word_dropout": word_dropout,
            "include_static_vectors": include_static_vectors,
        },
    )


def _init(model: Model, X: list[Doc] | None = None, Y: Any = None) -> None:
    for table in model.layers:
        table.initialize()
    n_chars, char_width = model.get_dim("nC"), model.get_dim("nM")
    model.set_param("E", _embedding_init(model.ops, (n_chars, 256, char_width)))
    vectors = require_width(model.attrs["include_static_vectors"], table_width(X))
    model.set_dim("nV", vectors, force=True)
    projection = model.get_dim("nP") if vectors else 0
    if projection:
        model.set_param("W", glorot_uniform_init(model.ops, (projection, vectors)))
    width = sum(table.get_dim("nO") for table in model.layers) + n_chars * char_width
    model.set_dim("nO", width + (projection or vectors), force=True)


def _embedding_init(ops: Any, shape: tuple) -> Any:
    """Uniform in [-0.5, 0.5]: with no normalising layer after them, embeddings of about unit
    scale (a hashed row is the sum of four) let the BiLSTM learn from the first steps."""
    return uniform_init(ops, shape, lo=-0.5, hi=0.5)


def _forward(model: Model, docs: list[Doc], is_train: bool) -> tuple[list[Floats2d], Callable]:
    ops = model.ops
    lengths = [len(doc) for doc in docs]
    width = model.get_dim("nO")
    if not sum(lengths):
        return [ops.alloc2f(0, width) for _ in docs], lambda d_out: []
    ids = numpy.concatenate([doc.to_array(model.attrs["columns"]) for doc in docs])  # (N, C)
    if is_train and model.attrs["word_dropout"]:
        dropped = numpy.random.random(len(ids)) < model.attrs["word_dropout"]
        ids[dropped, model.attrs["norm_column"]] = hash_string(UNKNOWN_NORM)
    words, first, inverse = numpy.unique(ids[:, 0], return_index=True, return_inverse=True)
    strings = docs[0].vocab.strings
    output = ops.alloc2f(len(ids), width)
    backprops, start = [], 0
    for i, table in enumerate(model.layers):
        embedded, backprop = table(ops.asarray(ids[:, 2 + i].copy()), is_train)
        output[:, start : start + embedded.shape[1]] = embedded
        backprops.append((start, start + embedded.shape[1], backprop))
        start += embedded.shape[1]
    word_index = ops.asarray1i(inverse.ravel())
    char_ids = None
    if model.get_dim("nC"):
        char_ids = ops.asarray(
            word_byte_ids([strings[int(key)] for key in words], model.get_dim("nC"))
        )
        chars = char_features(model.get_param("E"), char_ids)  # shape: (U, nC * nM)
        output[:, start : start + chars.shape[1]] = chars[word_index]
        char_span = (start, start + chars.shape[1])
        start += chars.shape[1]
    vectors = None
    if model.get_dim("nV"):
        vectors = word_vectors(docs[0].vocab.vectors, words, ids[first, 1], model.get_dim("nV"))
        vectors = ops.asarray(vectors)  # shape: (U, nV)
        mixed = (
            ops.gemm(vectors, model.get_param("W"), trans2=True) if model.get_dim("nP") else vectors
        )
        output[:, start:] = mixed[word_index]

    def backprop(d_out: list[Floats2d]) -> list:
        d_flat = ops.flatten(d_out)  # shape: (N, nO)
        for begin, end, backprop_table in backprops:
            backprop_table(ops.as_contig(d_flat[:, begin:end]))
        if char_ids is not None:
            d_words = _sum_by_word(
                ops, d_flat[:, char_span[0] : char_span[1]], word_index, len(words)
            )
            model.inc_grad("E", char_grads(ops, model.get_param("E").shape, char_ids, d_words))
        if vectors is not None and model.get_dim("nP"):
            d_words = _sum_by_word(ops, d_flat[:, start:], word_index, len(words))
            model.inc_grad("W", ops.gemm(d_words, vectors, trans1=True))
        return []

    return ops.unflatten(output, ops.asarray1i(lengths)), backprop


def word_byte_ids(words: Sequence[str], count: int) -> numpy.ndarray:
    """`(len(words), count)` UTF-8 byte ids of each word in the order 0, -1, 1, -2, ...,
    NO_BYTE where the word has no more bytes: what `Doc.to_utf8_array(count)` gives a token."""
    data = [word.encode("utf8") for word in words]
    sizes = numpy.fromiter((len(b) for b in data), dtype="int64", count=len(data))  # (U,)
    flat = numpy.frombuffer(b"".join(data) + b"\0", dtype=numpy.uint8)
    starts = numpy.cumsum(sizes) - sizes
    position = numpy.arange(count)  # shape: (nC,)
    offset = numpy.where(position % 2 == 0, position // 2, sizes[:, None] - 1 - position // 2)
    present = position < sizes[:, None]  # shape: (U, nC)
    index = numpy.where(present, starts[:, None] + offset, len(flat) - 1)
    return numpy.where(present, flat[index], NO_BYTE).astype("int32")


def char_features(table: Any, char_ids: Any) -> Floats2d:
    """Each word's byte embeddings side by side: `table` `(nC, 256, nM)`, ids `(U, nC)`."""
    positions = numpy.arange(char_ids.shape[1])
    return table[positions, char_ids].reshape(char_ids.shape[0], -1)  # shape: (U, nC * nM)


def char_grads(ops: Any, shape: tuple, char_ids: Any, d_words: Floats2d) -> Any:
    """The gradient of the byte table for per-word gradients `d_words` `(U, nC * nM)`."""
    n_chars, n_bytes, width = shape
    cells = ops.asarray1i((char_ids + ops.xp.arange(n_chars) * n_bytes).ravel())
    d_table = ops.alloc2f(n_chars * n_bytes, width)
    ops.scatter_add(d_table, cells, ops.as_contig(d_words.reshape(-1, width)))
    return d_table.reshape(shape)


def _sum_by_word(ops: Any, d_tokens: Floats2d, word_index: Any, n_words: int) -> Floats2d:
    """Per-token gradients summed per distinct word."""
    d_words = ops.alloc2f(n_words, d_tokens.shape[1])
    ops.scatter_add(d_words, word_index, ops.as_contig(d_tokens))
    return d_words
