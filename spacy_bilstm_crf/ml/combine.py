"""Architectures that combine feature layers: `spacy-bilstm-crf.ProjectedEmbed.v1` mixes
features to a fixed width, `spacy-bilstm-crf.ConcatFeatures.v1` puts two side by side (a
transformer listener next to casing features in `configs/bilstm_crf_trf.cfg`).
"""

from collections.abc import Callable
from typing import Any

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Maxout, Model, chain, list2ragged, ragged2list, with_array
from thinc.types import Floats2d


@registry.architectures("spacy-bilstm-crf.ProjectedEmbed.v1")
def build_projected_embed(
    features: Model[list[Doc], list[Floats2d]], width: int
) -> Model[list[Doc], list[Floats2d]]:
    """`features` mixed to `width` values per token by a Maxout (3 pieces, layer-normalised),
    as spaCy's `MultiHashEmbed` mixes its embeddings: for encoders that need a fixed width,
    such as spaCy's `MaxoutWindowEncoder`, whatever the features' width (static vectors
    included or not). The Maxout's input width is found at initialization."""
    mix = with_array(Maxout(width, nP=3, dropout=0.0, normalize=True))
    model = chain(features, list2ragged(), mix, ragged2list())
    model.set_dim("nO", width, force=True)
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
