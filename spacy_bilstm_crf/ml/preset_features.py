"""The thinc architecture `spacy-bilstm-crf.BiLSTMCRF.v2`: `BiLSTMCRF.v1` that reads what is
fixed.

A tagger decoding around presets (entities set before it, a person's fixes) hears of them
only through the CRF's transitions. This version also gives the BiLSTM, beside each token's
vector, which tags the token may not take: one column per tag, 1 where the constraints rule
the tag out, all 0 for a free token (the same `(T, K)` tag sets the CRF decodes under, see
`tag_sets.py`). A fixed token then tells its context what it is. The columns skip the input
dropout. In training the pipe shows each doc random gold presets (`train/random_presets.py`):
a share `preset_docs` of the docs, each of its known entities (or a click in it) and outside
tokens with a probability drawn up to `preset_rate`, and sometimes a checked stretch, so that
the model learns to use them and to do without.

The model's input is a `PresetInput` (the docs, and per doc its tag sets or None); callers
use `model_input` or `predict`, which give each architecture what it reads.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, Ops
from thinc.types import Floats2d

from .bilstm_crf import init_model, preset_width, tag_vectors, tagger_layer


class PresetInput(NamedTuple):
    """Docs, and per doc the tags each token may take, bool `(T, K)` (None: every tag)."""

    docs: list[Doc]
    sets: list[numpy.ndarray | None]


@registry.architectures("spacy-bilstm-crf.BiLSTMCRF.v2")
def build_bilstm_crf_v2(
    tok2vec: Model[list[Doc], list[Floats2d]],
    hidden_width: int = 256,
    depth: int = 1,
    dropout: float = 0.25,
    max_length: int = 512,
    rnn: str = "lstm",
    head: str = "crf",
    loss: str = "crf",
    preset_docs: float = 0.5,
    preset_rate: float = 0.5,
    nO: int | None = None,
) -> Model[PresetInput, list[Floats2d]]:
    """`BiLSTMCRF.v1` (the same settings) whose BiLSTM also reads the tags each token's
    presets rule out. Training shows a share `preset_docs` of the docs random gold presets,
    each known entity and outside token with a probability drawn from [0, `preset_rate`]
    (see `train/random_presets.py`)."""
    for name, value in (("preset_docs", preset_docs), ("preset_rate", preset_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    tagger = tagger_layer(hidden_width, depth, dropout, rnn, head, loss, nO, preset_width=0)
    return Model(
        "bilstm_crf_presets",
        _forward,
        init=_init,
        layers=[tok2vec, tagger],
        refs={"tok2vec": tok2vec, "tagger": tagger},
        dims={"nO": nO},
        attrs={"max_length": max_length, "preset_docs": preset_docs, "preset_rate": preset_rate},
    )


def reads_presets(model: Model) -> bool:
    """Whether the model's BiLSTM reads the presets (`BiLSTMCRF.v2`)."""
    return "preset_rate" in model.attrs


def training_rates(model: Model) -> tuple[float, float] | None:
    """The share of training docs shown random presets and the highest rate of a doc's known
    annotation shown; None for a model that reads no presets."""
    if not reads_presets(model):
        return None
    return model.attrs["preset_docs"], model.attrs["preset_rate"]


def model_input(
    model: Model, docs: list[Doc], sets: Sequence[numpy.ndarray | None] | None = None
) -> list[Doc] | PresetInput:
    """What `model` reads: the docs, with their tag sets `sets` (None: no presets) for a
    model that reads presets."""
    if not reads_presets(model):
        return docs
    return PresetInput(docs, [None] * len(docs) if sets is None else list(sets))


def predict(
    model: Model, docs: list[Doc], sets: Sequence[numpy.ndarray | None] | None = None
) -> list[Floats2d]:
    """Emission scores per segment of `docs`, given the tag sets `sets` where the model
    reads presets; nothing for docs without tokens."""
    if not any(len(doc) for doc in docs):
        return []
    return model.predict(model_input(model, docs, sets))


def features(ops: Ops, allowed: numpy.ndarray | None, length: int, width: int) -> Floats2d:
    """The tags a doc's tokens may not take, `(length, width)` float32: 1 where `allowed`
    rules a tag out; all 0 without presets."""
    if allowed is None:
        return ops.alloc2f(length, width)
    if allowed.shape != (length, width):
        raise ValueError(
            f"Tag sets of shape {allowed.shape} for a doc of {length} tokens and {width} tags."
        )
    return ops.asarray2f((~allowed).astype("float32"))


def _init(model: Model, X: PresetInput | list[Doc] | None = None, Y: Any = None) -> None:
    init_model(model, X.docs if isinstance(X, PresetInput) else X, Y)


def _forward(
    model: Model, X: PresetInput, is_train: bool
) -> tuple[list[Floats2d], Callable[[list[Floats2d]], Any]]:
    docs, sets = X
    if len(sets) != len(docs):
        raise ValueError(f"{len(sets)} tag sets for {len(docs)} docs.")
    vectors, backprop_vectors = model.get_ref("tok2vec")(docs, is_train)
    width, xp = preset_width(model), model.ops.xp
    joined = [
        xp.hstack([array, features(model.ops, allowed, len(array), width)])
        for array, allowed in zip(vectors, sets)
    ]  # each shape: (T, D + K)
    emissions, backprop_tagged = tag_vectors(model, docs, joined, is_train)

    def backprop(d_emissions: list[Floats2d]) -> Any:
        d_joined = backprop_tagged(d_emissions)
        own = [xp.ascontiguousarray(d[:, : d.shape[1] - width]) for d in d_joined]
        return backprop_vectors(own)

    return emissions, backprop
