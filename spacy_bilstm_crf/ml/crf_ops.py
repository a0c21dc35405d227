"""The CRF operations on the model's emission scores: loss, decoding, span probabilities,
k-best analyses and tag posteriors.

These functions and `bilstm_crf.torch_module` are the only code that reaches the CRF inside
the torch module, so the pipe never does CRF maths. They take the per-segment emission arrays
that the model's forward pass returns and pad them batch-first for the CRF. The decoding and
probability functions take optional `candidates`: per segment, the tags each token may take
(bool `(T_i, K)`, see `tag_sets.py`); their results are then given those constraints.
"""

from collections.abc import Sequence

import numpy
import torch
from thinc.api import Model, torch2xp, xp2torch
from thinc.types import Floats2d, Ints1d

from ..nn.crf import CRF
from ..nn.crf import ConstraintError as ConstraintError  # for the pipe
from .bilstm_crf import torch_module

# Per segment, the tags each token may take, bool `(T_i, K)`; None: every tag.
Candidates = Sequence[numpy.ndarray] | None


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


def tagger_decode(
    model: Model, emissions: list[Floats2d], candidates: Candidates = None
) -> tuple[list[numpy.ndarray], int]:
    """The best tag ids of each segment, and how many broke the scheme's constraints."""
    if not emissions:
        return [], 0
    module = torch_module(model)
    scores, mask = _pad(model, emissions, module.crf)
    with torch.no_grad():
        paths, invalid = module.decode(scores, mask, _pad_sets(candidates, scores))
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
    candidates: Candidates = None,
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
        _pad_sets(candidates, scores),
    )
    return probs.cpu().numpy()


def tagger_nbest(
    model: Model,
    emissions: list[Floats2d],
    k: int,
    temperature: float = 1.0,
    candidates: Candidates = None,
) -> list[list[tuple[numpy.ndarray, float]]]:
    """Per segment, its `k` best tag paths (fewer when it has fewer) with their log
    probabilities under the CRF (scores divided by `temperature`), best first."""
    if not emissions:
        return []
    crf = _crf(model, temperature)
    scores, mask = _pad(model, emissions, crf)
    scores = scores.double() / temperature  # float64, as in crf_span_probs
    sets = _pad_sets(candidates, scores)
    with torch.no_grad():
        paths, path_scores = crf.nbest(scores, mask, k=k, candidates=sets)
        log_z = crf.log_partition(scores, mask, sets)
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
    candidates: Candidates = None,
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
    paths, log_probs = crf.piece_nbest(scores, mask, *as_long, k, _pad_sets(candidates, scores))
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
    model: Model, emissions: list[Floats2d], temperature: float = 1.0, candidates: Candidates = None
) -> list[numpy.ndarray]:
    """Per segment, the CRF posterior of each tag at each token, `(T, K)` float32 rows that
    sum to one, from scores divided by `temperature`; computed in float64 (forward-backward)."""
    if not emissions:
        return []
    crf = _crf(model, temperature)
    scores, mask = _pad(model, emissions, crf)
    scores = scores.double() / temperature
    with torch.no_grad():
        sets = _pad_sets(candidates, scores)
        marginals = crf.marginals(scores, mask, sets).float().cpu().numpy()  # shape: (B, T, K)
    return [marginals[i, : len(array)] for i, array in enumerate(emissions)]


def _pad_sets(candidates: Candidates, scores: torch.Tensor) -> torch.Tensor | None:
    """Per-segment tag sets padded like `scores` `(B, T, K)` (padding allows every tag)."""
    if candidates is None:
        return None
    padded = numpy.ones(scores.shape, dtype=bool)  # shape: (B, T, K)
    for row, sets in enumerate(candidates):
        padded[row, : len(sets)] = sets
    return torch.from_numpy(padded).to(scores.device)


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
