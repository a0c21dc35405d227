"""The thinc architecture `spacy-bilstm-crf.BiLSTMCRF.v1`, and the CRF operations on its output.

Data flow: `tok2vec` (Docs -> token vectors), cut into segments (see `segments.py`), then a
PyTorch `BiLSTMTagger` behind thinc's `PyTorchWrapper` (vectors -> emission scores per
segment). The CRF lives inside that torch module; `tagger_loss`, `tagger_decode`,
`crf_span_probs`, `tagger_nbest`, `tagger_piece_nbest` and `tagger_marginals` are the only
code that reaches it, so the pipe never does CRF maths. `load_bytes` checks a config given
at load time against the saved model before loading its weights.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy
import srsly
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import ArgsKwargs, Model, torch2xp, xp2torch
from thinc.types import Floats2d, Ints1d

from .bilstm import BiLSTMTagger
from .crf import CRF
from .parallel import one_intra_op_thread
from .segments import segment_lengths
from .serialize import torch_wrapper
from .tags import allowed_transitions


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


def tagger_loss(
    model: Model, emissions: list[Floats2d], tags: list[Ints1d]
) -> tuple[float, list[Floats2d]]:
    """The head's summed loss (CRF negative log-likelihood by default) and its gradient.

    Tags are ids, `-1` where unknown (trained as a partial label). The gradient of the
    module's own head parameters (transitions, loss weights) is left on them, for the shim's
    `finish_update` to apply.
    """
    module = torch_module(model)
    scores, mask = _pad(model, emissions, module.crf)
    scores.requires_grad_(True)
    gold = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    gold[mask] = xp2torch(model.ops.xp.concatenate(tags), device=mask.device).long()
    loss = module.loss(scores, gold, mask)
    loss.backward()
    d_scores = torch2xp(scores.grad[mask])
    return loss.detach().item(), model.ops.unflatten(d_scores, _sizes(model, emissions))


def tagger_decode(model: Model, emissions: list[Floats2d]) -> tuple[list[numpy.ndarray], int]:
    """The best tag ids of each segment, and how many broke the scheme's constraints."""
    if not emissions:
        return [], 0
    module = torch_module(model)
    scores, mask = _pad(model, emissions, module.crf)
    with torch.no_grad():
        paths, invalid = module.decode(scores, mask)
    rows = paths.cpu().numpy()
    return [row[: len(array)] for row, array in zip(rows, emissions)], int(invalid.sum())


def crf_span_probs(
    model: Model,
    emissions: list[Floats2d],
    rows: numpy.ndarray,
    starts: numpy.ndarray,
    tags: numpy.ndarray,
    after: numpy.ndarray,
    temperature: float = 1.0,
) -> numpy.ndarray:
    """The CRF probability that each span is exactly what was predicted.

    Span `e` is in segment `rows[e]` from token `starts[e]`, with the tag ids `tags[e]` (`(E,
    L)`, padded with -1), and the token after it, if any, is not `after[e]` (which would
    continue the entity). The probability sums over every such path: one forward-backward
    pass over the segments for all spans, in float64 (a probability near 1 is a ratio of two
    large sums). Scores are divided by `temperature` first (calibration).
    """
    if not len(rows):
        return numpy.zeros(0, dtype="float64")
    crf = _crf(model, temperature)
    scores, mask = _pad(model, emissions, crf)
    scores = scores.double() / temperature
    device = mask.device
    probs = crf.span_probs(
        scores,
        mask,
        torch.as_tensor(rows, device=device),
        torch.as_tensor(starts, device=device),
        torch.as_tensor(tags, device=device),
        torch.as_tensor(after, device=device),
    )
    return probs.cpu().numpy()


def tagger_nbest(
    model: Model, emissions: list[Floats2d], k: int, temperature: float = 1.0
) -> list[list[tuple[numpy.ndarray, float]]]:
    """Per segment, its `k` best tag paths (fewer when it has fewer) with their log
    probabilities under the CRF (scores divided by `temperature`), best first."""
    if not emissions:
        return []
    crf = _crf(model, temperature)
    scores, mask = _pad(model, emissions, crf)
    scores = scores.double() / temperature  # float64, as in crf_span_probs
    with torch.no_grad():
        paths, path_scores = crf.nbest(scores, mask, k=k)
        log_z = crf.log_partition(scores, mask)
    log_probs = (path_scores - log_z.unsqueeze(1)).cpu().numpy()  # shape: (B, k)
    rows = paths.cpu().numpy()  # shape: (B, k, T)
    return [
        [
            (rows[i, j, : len(array)], float(log_probs[i, j]))
            for j in range(rows.shape[1])
            if numpy.isfinite(log_probs[i, j])
        ]
        for i, array in enumerate(emissions)
    ]


def tagger_piece_nbest(
    model: Model,
    emissions: list[Floats2d],
    rows: numpy.ndarray,
    starts: numpy.ndarray,
    ends: numpy.ndarray,
    k: int,
    temperature: float = 1.0,
) -> list[list[tuple[numpy.ndarray, float]]]:
    """Per piece (tokens `starts[p]..ends[p]-1` of segment `rows[p]`, such as a sentence), its
    `k` most probable labellings (fewer when it has fewer) with their log probabilities under
    the segment's CRF, best first; scores divided by `temperature`, in float64."""
    if not len(rows):
        return []
    crf = _crf(model, temperature)
    scores, mask = _pad(model, emissions, crf)
    scores = scores.double() / temperature
    device = mask.device
    as_long = [torch.as_tensor(array, device=device) for array in (rows, starts, ends)]
    paths, log_probs = crf.piece_nbest(scores, mask, *as_long, k)
    paths, log_probs = paths.cpu().numpy(), log_probs.cpu().numpy()
    return [
        [
            (paths[p, j, : ends[p] - starts[p]], float(log_probs[p, j]))
            for j in range(paths.shape[1])
            if numpy.isfinite(log_probs[p, j])
        ]
        for p in range(len(rows))
    ]


def tagger_marginals(
    model: Model, emissions: list[Floats2d], temperature: float = 1.0
) -> list[numpy.ndarray]:
    """Per segment, the CRF posterior of each tag at each token, `(T, K)` float32 rows that
    sum to one, from scores divided by `temperature`; computed in float64 (forward-backward)."""
    if not emissions:
        return []
    crf = _crf(model, temperature)
    scores, mask = _pad(model, emissions, crf)
    scores = scores.double() / temperature
    with torch.no_grad():
        marginals = crf.marginals(scores, mask).float().cpu().numpy()  # shape: (B, T, K)
    return [marginals[i, : len(array)] for i, array in enumerate(emissions)]


def _crf(model: Model, temperature: float) -> CRF:
    """The model's CRF, or a copy with its scores divided by `temperature`."""
    crf = torch_module(model).crf
    return crf if temperature == 1.0 else crf.scaled(temperature)


def _sizes(model: Model, arrays: Sequence[Floats2d]) -> Ints1d:
    return model.ops.asarray1i([len(array) for array in arrays])


def _pad(model: Model, arrays: Sequence[Floats2d], crf: CRF) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-first padded scores `(B, T, K)` on the CRF's device, and their mask `(B, T)`."""
    device = crf.transitions.device
    lengths = torch.as_tensor([len(array) for array in arrays], device=device)
    steps = int(lengths.max()) if len(arrays) else 0
    mask = lengths.unsqueeze(1) > torch.arange(steps, device=device)  # shape: (B, T)
    flat = xp2torch(model.ops.flatten(list(arrays)), device=device).float()  # shape: (N, K)
    scores = flat.new_zeros(len(arrays), steps, crf.num_tags)  # shape: (B, T, K)
    scores[mask] = flat
    return scores, mask
