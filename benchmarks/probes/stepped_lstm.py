"""Probe: the BiLSTM at inference as torch's fused LSTM against input gates computed once per
distinct input row, with the recurrence stepped in Python over the same length buckets.

    python benchmarks/probes/stepped_lstm.py MODEL TEST.spacy [--threads 1 2] [--rounds 3]

Token features are mostly a function of the word, so a batch has far fewer distinct rows than
tokens; the fused `torch.lstm` cannot take precomputed gates, so the stepped version adds
`h W_hh` and applies the gate functions in place, one small op after another. The pipeline's
own features of the test docs (batches of 256) go through both; the states must agree to 1e-4.
Torch runs on one intra-op thread; `--threads 2` runs the buckets and directions on two.
"""

import argparse
import statistics
import time
from functools import partial

import numpy
import spacy
import torch
from spacy.tokens import DocBin
from spacy.util import minibatch
from torch import Tensor, nn

from spacy_bilstm_crf import model as bilstm_crf_model
from spacy_bilstm_crf.layout import bucket_layout
from spacy_bilstm_crf.parallel import run_tasks


def distinct_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of `x` and the index of each row's copy (grouped by a random
    projection, checked exactly; all rows when the check fails)."""
    probe = numpy.random.default_rng(0).standard_normal(x.shape[1])
    _, first, inverse = numpy.unique(x.numpy() @ probe, return_index=True, return_inverse=True)
    first, inverse = torch.from_numpy(first), torch.from_numpy(inverse.ravel())
    if not torch.equal(x[first[inverse]], x):
        return x, torch.arange(len(x))
    return x[first], inverse


def layer_weights(rnn: nn.LSTM) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Input weights `(D, 8H)` and biases of both directions, and each direction's `W_hh^T`,
    gates reordered to i, f, o, g so that the sigmoids are one block."""
    hidden = rnn.hidden_size
    order = torch.cat([torch.arange(2 * hidden), torch.arange(3 * hidden, 4 * hidden)])
    order = torch.cat([order, torch.arange(2 * hidden, 3 * hidden)])
    inputs, biases, recurrent = [], [], []
    for suffix in ("_l0", "_l0_reverse"):
        inputs.append(getattr(rnn, "weight_ih" + suffix)[order])
        biases.append((getattr(rnn, "bias_ih" + suffix) + getattr(rnn, "bias_hh" + suffix))[order])
        recurrent.append(getattr(rnn, "weight_hh" + suffix)[order].t().contiguous())
    return torch.cat(inputs).t(), torch.cat(biases), recurrent


def run_bucket(gates: Tensor, index: Tensor, recurrent: Tensor) -> Tensor:
    """States `(B_b, T_b, H)` of one bucket from its rows' input gates, step by step."""
    hidden = recurrent.shape[0]
    steps = gates[index.t()]  # shape: (T_b, B_b, 4H), a copy
    states = steps.new_empty(index.shape[1], index.shape[0], hidden)
    h = steps.new_zeros(index.shape[0], hidden)
    cell = steps.new_zeros(index.shape[0], hidden)
    for t in range(index.shape[1]):
        gate = steps[t].addmm_(h, recurrent)
        torch.sigmoid_(gate[:, : 3 * hidden])
        torch.tanh_(gate[:, 3 * hidden :])
        cell.mul_(gate[:, hidden : 2 * hidden]).addcmul_(gate[:, :hidden], gate[:, 3 * hidden :])
        h = torch.tanh(cell, out=states[t]).mul_(gate[:, 2 * hidden : 3 * hidden])
    return states.transpose(0, 1)


def stepped_states(module: nn.Module, tokens: Tensor, lengths: Tensor, threads: int) -> Tensor:
    """The BiLSTM states `(N, H)` of one layer by distinct-row gates and stepped recurrences."""
    layout = bucket_layout(lengths.numpy())
    weight, bias, recurrent = layer_weights(module.rnn)
    rows, inverse = distinct_rows(tokens)
    gates = torch.addmm(bias, rows, weight)
    width = 4 * module.rnn.hidden_size
    sides = [gates[:, :width], gates[:, width:]]
    grids = (layout.forward, layout.reverse)
    tasks = [
        partial(run_bucket, sides[side], inverse[index], recurrent[side])
        for side in (0, 1)
        for index in grids[side]
    ]
    outputs = run_tasks(tasks, threads)
    half = len(layout.forward)
    forward = torch.cat([out.flatten(0, 1) for out in outputs[:half]])
    reverse = torch.cat([out.flatten(0, 1) for out in outputs[half:]])
    return torch.cat(
        [
            forward.index_select(0, layout.forward_rows),
            reverse.index_select(0, layout.reverse_rows),
        ],
        dim=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("test")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nlp = spacy.load(args.model)
    pipe = nlp.get_pipe("ner")
    module = bilstm_crf_model.torch_module(pipe.model)
    module.eval()
    docs = list(DocBin().from_disk(args.test).get_docs(nlp.vocab))
    batches, tokens, distinct = [], 0, 0
    for batch in minibatch(docs, 256):
        vectors = pipe.model.get_ref("tok2vec").predict(batch)
        lengths = [n for d in bilstm_crf_model.doc_segments(pipe.model, batch) for n in d]
        flat = torch.from_numpy(numpy.concatenate(vectors))
        batches.append((flat, torch.as_tensor(lengths)))
        tokens, distinct = tokens + len(flat), distinct + len(distinct_rows(flat)[0])
    print(f"{args.test}: {tokens:,} tokens, {distinct:,} distinct feature rows per batch")
    torch.set_num_threads(1)
    with torch.no_grad():
        for flat, lengths in batches:
            module.threads = 1
            difference = module.encode(flat, lengths) - stepped_states(module, flat, lengths, 1)
            assert float(difference.abs().max()) < 1e-4
        for threads in args.threads:
            module.threads = threads
            times: dict[str, list[float]] = {"fused": [], "stepped": []}
            for _ in range(args.rounds):
                for name in times:
                    start = time.perf_counter()
                    for flat, lengths in batches:
                        if name == "fused":
                            module.encode(flat, lengths)
                        else:
                            stepped_states(module, flat, lengths, threads)
                    times[name].append(time.perf_counter() - start)
            fused, stepped = (statistics.median(times[name]) for name in ("fused", "stepped"))
            print(
                f"{threads} thread(s): fused {fused * 1e3:.0f} ms, stepped {stepped * 1e3:.0f} "
                f"ms ({fused / stepped:.2f}x)"
            )


if __name__ == "__main__":
    main()
