"""`spacy-bilstm-crf.WordCharEmbed.v1`, the first token features: spaCy's `MultiHashEmbed`
and `CharacterEmbed` side by side, optionally a character CNN. Kept for configs that name it;
`WordCharEmbed.v2` (`word_char_embed.py`) is the default. No contextual encoder: the BiLSTM
is the encoder, so the vectors go to it straight from the embedding tables.
"""

from collections.abc import Callable
from typing import Any

import numpy
from spacy.ml._character_embed import CharacterEmbed
from spacy.ml.models.tok2vec import MultiHashEmbed
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, chain, concatenate
from thinc.types import Floats2d

from .char_cnn import build_char_cnn

# The NORM that word dropout gives a dropped token: one shared "unknown word" embedding.
UNKNOWN_NORM = "<unk>"


@registry.architectures("spacy-bilstm-crf.WordCharEmbed.v1")
def build_word_char_embed(
    width: int,
    attrs: list[str],
    rows: list[int],
    include_static_vectors: bool = False,
    char_width: int = 16,
    char_count: int = 8,
    word_dropout: float = 0.0,
    char_cnn_width: int = 0,
) -> Model[list[Doc], list[Floats2d]]:
    """Per-token vectors of `width + char_width * char_count + char_cnn_width` values.

    `attrs`/`rows` and `include_static_vectors` are those of spaCy's `MultiHashEmbed` (e.g.
    NORM, PREFIX, SUFFIX, SHAPE); the characters are spaCy's `CharacterEmbed` features: the
    first and last `char_count // 2` UTF-8 bytes of each word, `char_width` values each.

    `word_dropout`: in training, each token's NORM is replaced by one "unknown" value with this
    probability, so that the model learns to tag words it has no embedding for (unseen names)
    from their characters, shape and context.

    `char_cnn_width`: if positive, also a character CNN over each whole word (see `chars.py`)
    with this many filters.
    """
    if not 0.0 <= word_dropout < 1.0:
        raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
    if word_dropout and "NORM" not in [str(attr).upper() for attr in attrs]:
        raise ValueError(f"word_dropout replaces the NORM attribute, which attrs {attrs} lack")
    if char_cnn_width < 0:
        raise ValueError(f"char_cnn_width must be 0 (off) or positive, got {char_cnn_width}")
    words = MultiHashEmbed(
        width=width, attrs=attrs, rows=rows, include_static_vectors=include_static_vectors
    )
    if word_dropout:
        words = chain(drop_norms(word_dropout), words)
    if include_static_vectors:
        words = chain(require_vectors(), words)
    layers = [words, CharacterEmbed(nM=char_width, nC=char_count)]
    if char_cnn_width:
        layers.append(build_char_cnn(char_cnn_width))
    model: Model[list[Doc], list[Floats2d]] = concatenate(*layers)
    model.set_dim("nO", width + char_width * char_count + char_cnn_width, force=True)
    return model


def require_vectors() -> Model[list[Doc], list[Doc]]:
    """The docs, unchanged; initializing it fails with a clear message if their vocab has no
    vectors (spaCy's StaticVectors would fail later with an IndexError)."""
    return Model("require_vectors", _pass_docs, init=_init_require_vectors)


def _pass_docs(model: Model, docs: list[Doc], is_train: bool) -> tuple[list[Doc], Callable]:
    return docs, lambda d_docs: []


def _init_require_vectors(
    model: Model, X: list[Doc] | None = None, Y: Any = None
) -> Model[list[Doc], list[Doc]]:
    if X and X[0].vocab.vectors.shape[0] == 0:
        raise ValueError(
            "include_static_vectors is true, but the vocab has no vectors. Set [paths] vectors "
            "(e.g. the output of scripts/vectors.py, or a pipeline with vectors such as "
            "en_core_web_lg), or set include_static_vectors = false."
        )
    return model


def drop_norms(rate: float) -> Model[list[Doc], list[Doc]]:
    """In training, copies of the docs where each token's NORM is UNKNOWN_NORM with
    probability `rate`; the docs themselves otherwise (the originals are never changed)."""
    return Model("drop_norms", _drop_norms_forward, attrs={"rate": rate})


def _drop_norms_forward(
    model: Model, docs: list[Doc], is_train: bool
) -> tuple[list[Doc], Callable]:
    rate = model.attrs["rate"]
    if not is_train or not rate:
        return docs, lambda d_docs: []
    out = []
    for doc in docs:
        dropped = numpy.flatnonzero(numpy.random.random(len(doc)) < rate)
        if len(dropped):
            doc = doc.copy()
            for i in dropped:
                doc[int(i)].norm_ = UNKNOWN_NORM
        out.append(doc)
    return out, lambda d_docs: []
