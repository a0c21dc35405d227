"""Viterbi decoding for the linear-chain CRF: the best path per sequence and its score."""

import numpy as np
import torch
from torch import Tensor


def viterbi(
    emissions: Tensor, mask: Tensor, trans: Tensor, start: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Max-product forward pass keeping only scores, then a backtrace that recomputes each step.

    The forward pass runs through the padding (rows read their score at their last token) and
    stores no back-pointers: a max with indices costs several times a plain max on CPU. The
    backtrace redoes, for the one tag chosen per row, the sums the forward pass maximised, in
    NumPy on the host (small per-step operations cost far less there than in torch); the sums
    are the same floating-point operations, so it picks the same tags, ties to the lowest.
    """
    batch, steps, num_tags = emissions.shape
    if steps == 0:
        return mask.new_full((batch, 0), -1, dtype=torch.long), emissions.new_zeros(batch)
    emissions = emissions.transpose(0, 1)  # shape: (T, B, K)
    scores = emissions.new_empty(steps, batch, num_tags)  # shape: (T, B, K)
    torch.add(start, emissions[0], out=scores[0])
    candidates = emissions.new_empty(num_tags, batch, num_tags)  # shape: (K, B, K), from, -, to
    step_scores, emission_steps = scores.unbind(0), emissions.unbind(0)
    previous_steps = scores.transpose(1, 2).unsqueeze(-1).unbind(0)  # shape: (K, B, 1) each
    moves = trans.unsqueeze(1)  # shape: (K, 1, K)
    for t in range(1, steps):
        torch.add(previous_steps[t - 1], moves, out=candidates)
        torch.amax(candidates, 0, out=step_scores[t])
        step_scores[t].add_(emission_steps[t])
    lengths = mask.sum(1)  # shape: (B,)
    last = (lengths - 1).clamp(min=0)
    best, tag = (scores[last, torch.arange(batch, device=mask.device)] + end).max(-1)
    host = scores.dtype if scores.dtype != torch.bfloat16 else torch.float32
    history = scores.to("cpu", host).numpy()  # shape: (T, B, K)
    into = trans.t().to("cpu", host).numpy()  # shape: (K, K), to, from
    active = mask.t().cpu().numpy()  # shape: (T, B)
    current = tag.cpu().numpy()  # shape: (B,)
    path = np.empty((steps, batch), dtype=np.int64)  # shape: (T, B)
    for t in range(steps - 1, 0, -1):
        path[t] = current
        np.copyto(current, (history[t - 1] + into[current]).argmax(1), where=active[t])
    path[0] = current
    paths = torch.from_numpy(path.T).to(mask.device).masked_fill(~mask, -1)  # shape: (B, T)
    return paths, torch.where(lengths > 0, best, best.new_zeros(()))
