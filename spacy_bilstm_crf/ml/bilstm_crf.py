"""The thinc architecture `spacy-bilstm-crf.BiLSTMCRF.v1`: Docs -> emission scores.

Data flow: `tok2vec` (Docs -> token vectors), cut into segments (see `segments.py`), then a
PyTorch `BiLSTMTagger` behind thinc's `PyTorchWrapper` (vectors -> emission scores per
segment). The CRF lives inside that torch module; `crf_ops.py` has the operations on it.
`load_bytes` checks a config given at load time against the saved model before loading its
weights.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import srsly
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import ArgsKwargs, Model, torch2xp, xp2torch
from thinc.types import Floats2d

from ..nn.bilstm import BiLSTMTagger
from ..nn.parallel import default_threads as default_threads  # for the pipe
from ..nn.parallel import one_intra_op_thread
from ..tags import allowed_transitions
from .segments import segment_lengths
from .torch_wrapper import torch_wrapper


@registry.architectures("spacy-bilstm-crf.BiLSTMCRF.v1")
def build_bilstm_crf(
    tok2vec: Model[list[Doc], list[Floats2d]],
    hidden_width: int = 256,
    depth: int = 1,
    dropout: float = 0.25,
    max_length: int = 512,
    rnn: str = "lstm",
    head: str = "crf",
    loss: str = "crf",
    nO: int | None = None,
) -> Model[list[Doc], list[Floats2d]]:
    """Token vectors from `tok2vec` -> BiLSTM -> emission scores, one array per segment.

    `hidden_width` is the BiLSTM output width (both directions), `depth` its layers, `dropout`
    the rate on its input, between layers and on its output. Docs longer than `max_length`
    tokens are cut at sentence starts (else into windows). Variants: `rnn` "lstm" or "gru";
    `head` "crf" or "softmax" (per-token argmax, no transitions); `loss` "crf" or "crf+ce"
    (CRF likelihood plus token cross-entropy, with learned uncertainty weights). The tag count
    `nO`, the tag names and the scheme are set by the pipe before `initialize`.
    """
    tagger: Model[list[Floats2d], list[Floats2d]] = Model(
        "bilstm_tagger",
        _tagger_forward,
        init=_tagger_init,
        dims={"nI": None, "nO": nO},
        attrs={
            "hidden_width": hidden_width,
            "depth": depth,
            "dropout": dropout,
            "rnn": rnn,
            "head": head,
            "loss": loss,
            "tag_names": None,
            "scheme": "BIO",
        },
    )
    return Model(
        "bilstm_crf",
        _forward,
        init=_init,
        layers=[tok2vec, tagger],
        refs={"tok2vec": tok2vec, "tagger": tagger},
        dims={"nO": nO},
        attrs={"max_length": max_length},
    )


def set_tags(model: Model, tag_names: Sequence[str], scheme: str = "BIO") -> None:
    """Tell the model its tags before it is built (initialize or load)."""
    tagger = model.get_ref("tagger")
    if is_built(model) and list(tagger.attrs["tag_names"]) != list(tag_names):
        raise ValueError(
            f"The model was built for tags {tagger.attrs['tag_names']}, not {list(tag_names)}: "
            "labels cannot change after initialization."
        )
    tagger.attrs["tag_names"] = list(tag_names)
    tagger.attrs["scheme"] = scheme
    for node in (model, tagger):
        node.set_dim("nO", len(tag_names), force=True)


def build(model: Model, input_width: int) -> None:
    """Create the PyTorch module for `input_width`-wide vectors (tags must be set)."""
    tagger = model.get_ref("tagger")
    tagger.set_dim("nI", input_width, force=not is_built(model))
    tagger.initialize()


def is_built(model: Model) -> bool:
    """Whether the PyTorch module exists (after initialize or build)."""
    return bool(model.get_ref("tagger").layers)


def input_width(model: Model) -> int:
    """Width of the vectors the BiLSTM reads."""
    return model.get_ref("tagger").get_dim("nI")


def doc_segments(model: Model, docs: Sequence[Doc]) -> list[list[int]]:
    """The segment lengths of each doc, as the model cuts them."""
    return [segment_lengths(doc, model.attrs["max_length"]) for doc in docs]


def _init(model: Model, X: list[Doc] | None = None, Y: Any = None) -> None:
    tok2vec = model.get_ref("tok2vec")
    tok2vec.initialize(X=X)
    if tok2vec.has_dim("nO"):
        width = tok2vec.get_dim("nO")
    elif X:
        width = next(v.shape[1] for v in tok2vec.predict(X))
    else:
        raise ValueError("Cannot infer the tok2vec width: initialize with sample docs.")
    build(model, width)


def _forward(
    model: Model, docs: list[Doc], is_train: bool
) -> tuple[list[Floats2d], Callable[[list[Floats2d]], Any]]:
    tok2vec, tagger = model.get_ref("tok2vec"), model.get_ref("tagger")
    vectors, backprop_vectors = tok2vec(docs, is_train)
    lengths = doc_segments(model, docs)
    pieces = [
        piece
        for array, sizes in zip(vectors, lengths)
        for piece in (
            [array] if len(sizes) == 1 else model.ops.unflatten(array, model.ops.asarray1i(sizes))
        )
    ]
    emissions, backprop_emissions = tagger(pieces, is_train)

    def backprop(d_emissions: list[Floats2d]) -> Any:
        d_pieces = backprop_emissions(d_emissions)
        d_vectors, start = [], 0
        for array, sizes in zip(vectors, lengths):
            own = d_pieces[start : start + len(sizes)]
            start += len(sizes)
            d_vectors.append(model.ops.flatten(own) if own else model.ops.alloc2f(*array.shape))
        return backprop_vectors(d_vectors)

    return emissions, backprop


def _tagger_init(model: Model, X: Any = None, Y: Any = None) -> None:
    if model.layers:
        return
    tags = model.attrs["tag_names"]
    if not tags:
        raise ValueError("The BiLSTM-CRF model has no tags: the pipe sets them before init.")
    module = BiLSTMTagger(
        input_size=model.get_dim("nI"),
        hidden_size=model.attrs["hidden_width"],
        num_tags=len(tags),
        depth=model.attrs["depth"],
        dropout=model.attrs["dropout"],
        allowed=allowed_transitions(tags, model.attrs["scheme"]),
        rnn=model.attrs["rnn"],
        head=model.attrs["head"],
        loss=model.attrs["loss"],
    )
    model._layers.append(torch_wrapper(module, _convert_inputs, _convert_outputs))


def _tagger_forward(
    model: Model, pieces: list[Floats2d], is_train: bool
) -> tuple[list[Floats2d], Callable]:
    if not pieces:
        return [], lambda d_emissions: []
    return model.layers[0](pieces, is_train)


def _convert_inputs(
    model: Model, pieces: list[Floats2d], is_train: bool
) -> tuple[ArgsKwargs, Callable[[ArgsKwargs], list[Floats2d]]]:
    sizes = model.ops.asarray1i([len(piece) for piece in pieces])
    device = model.shims[0].device
    tokens = xp2torch(model.ops.flatten(pieces), requires_grad=is_train, device=device)
    lengths = torch.as_tensor(sizes.tolist(), dtype=torch.long)

    def backprop(d_inputs: ArgsKwargs) -> list[Floats2d]:
        return model.ops.unflatten(torch2xp(d_inputs.args[0]), sizes)

    return ArgsKwargs(args=(tokens, lengths), kwargs={}), backprop


def _convert_outputs(
    model: Model, inputs_outputs: tuple[list[Floats2d], torch.Tensor], is_train: bool
) -> tuple[list[Floats2d], Callable[[list[Floats2d]], ArgsKwargs]]:
    pieces, scores = inputs_outputs
    sizes = model.ops.asarray1i([len(piece) for piece in pieces])
    emissions = model.ops.unflatten(torch2xp(scores), sizes)

    def backprop(d_emissions: list[Floats2d]) -> ArgsKwargs:
        d_scores = xp2torch(model.ops.flatten(d_emissions), device=scores.device)
        return ArgsKwargs(args=(scores,), kwargs={"grad_tensors": d_scores})

    return emissions, backprop


@contextmanager
def torch_threads(model: Model, threads: int) -> Iterator[None]:
    """Run the model's torch work inside the block with `threads` threads for its independent
    recurrences and one intra-op thread (see `parallel.py`), torch's setting restored after."""
    if is_built(model):
        torch_module(model).threads = threads
    with one_intra_op_thread():
        yield


# Settings of the tagger that shape the trained model: a config that changes them at load time
# contradicts the saved weights.
MODEL_ATTRS = ("hidden_width", "depth", "rnn", "head", "loss")
# Settings that only act while running: the config's values win over the saved ones.
RUNTIME_ATTRS = ("max_length", "dropout", "word_dropout", "rate")


def load_bytes(model: Model, data: bytes) -> None:
    """Load saved weights into a built model. Runtime settings keep the config's values; a
    model setting or width that the config gives and the saved model contradicts is an error,
    found before any weight is loaded."""
    nodes = list(model.walk())
    saved = srsly.msgpack_loads(data)
    if len(saved.get("nodes", [])) != len(nodes):
        raise ValueError(
            "The config's model has other layers than the saved one (a different tok2vec or "
            "feature architecture): load the pipeline with the model config it was trained with."
        )
    runtime = [{k: node.attrs[k] for k in RUNTIME_ATTRS if k in node.attrs} for node in nodes]
    saved_dims_all = [info.get("dims", {}) for info in saved["nodes"]]
    for node, saved_dims, saved_attrs in zip(nodes, saved_dims_all, saved["attrs"]):
        for name, value in (node._dims or {}).items():
            if value is not None and saved_dims.get(name) not in (None, value):
                raise ValueError(
                    f"The config sets {node.name} {name} = {value}, but the saved model has "
                    f"{saved_dims[name]}: settings that shape the model come from training."
                )
        for name in MODEL_ATTRS:
            if name not in node.attrs or name not in saved_attrs:
                continue
            trained = saved_attrs[name]
            trained = srsly.msgpack_loads(trained) if isinstance(trained, bytes) else trained
            if node.attrs[name] != trained:
                raise ValueError(
                    f"The config sets {name} = {node.attrs[name]!r}, but the model was trained "
                    f"with {trained!r}: settings that shape the model come from training."
                )
    model.from_bytes(data)
    for node, values in zip(nodes, runtime):
        node.attrs.update(values)


def torch_module(model: Model) -> BiLSTMTagger:
    """The PyTorch module inside the built model (the one place that reaches into the shim)."""
    if not is_built(model):
        raise ValueError("The BiLSTM-CRF model is not initialized yet.")
    return model.get_ref("tagger").layers[0].shims[0]._model
