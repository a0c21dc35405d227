"""The CRF against brute-force enumeration of every path, worked examples, and gradcheck."""

import itertools
import math
import random

import pytest
import torch
from torch.func import functional_call

from spacy_bilstm_crf import CRF, allowed_transitions, tag_names
from spacy_bilstm_crf.nn.forward_backward import (
    LogPartition,
    path_score,
    reference_log_z,
    scaled_forward,
)
from spacy_bilstm_crf.nn.nbest import kbest_viterbi
from spacy_bilstm_crf.nn.span_probs import forward_backward
from spacy_bilstm_crf.tags import Constraints, is_valid

NEG_INF = float("-inf")


def brute_force(crf: CRF, emissions: torch.Tensor, length: int, fixed=None):
    """Every path of one sequence: (log Z, best path, best score, marginals (T, K)).

    `fixed[t]` is a set of allowed tags at step t (None: all), for partial labels.
    """
    trans, start, end = (s.detach().double() for s in crf._scores(torch.float64))
    e = emissions.detach().double()
    scores, paths = [], []
    for path in itertools.product(range(crf.num_tags), repeat=length):
        if fixed is not None and any(tag not in fixed[t] for t, tag in enumerate(path)):
            continue
        score = start[path[0]] + end[path[-1]] + sum(e[t, tag] for t, tag in enumerate(path))
        score = score + sum(trans[a, b] for a, b in zip(path, path[1:]))
        scores.append(float(score))
        paths.append(path)
    finite = [s for s in scores if s > NEG_INF]
    if not finite:
        return NEG_INF, None, NEG_INF, None
    log_z = max(finite) + math.log(sum(math.exp(s - max(finite)) for s in finite))
    best = max(range(len(scores)), key=lambda i: scores[i])
    marg = torch.zeros(length, crf.num_tags, dtype=torch.float64)
    for score, path in zip(scores, paths):
        for t, tag in enumerate(path):
            marg[t, tag] += math.exp(score - log_z)
    return log_z, list(paths[best]), scores[best], marg


def random_constraints(rng: random.Random, k: int) -> Constraints | None:
    """None, random bools, or BIO constraints when k is odd."""
    kind = rng.choice(["none", "random", "bio"])
    if kind == "none":
        return None
    if kind == "bio" and k % 2 == 1:
        labels = [f"L{i}" for i in range(k // 2)]
        return allowed_transitions(tag_names(labels), "BIO")
    moves = [[rng.random() < 0.7 for _ in range(k)] for _ in range(k)]
    start = [rng.random() < 0.7 for _ in range(k)]
    end = [rng.random() < 0.7 for _ in range(k)]
    start[rng.randrange(k)] = end[rng.randrange(k)] = True
    return Constraints(moves, start, end)


def random_case(seed: int, scale: float = 1.0) -> tuple[CRF, torch.Tensor, torch.Tensor, list[int]]:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    k, steps, batch = rng.randint(1, 5), rng.randint(0, 6), rng.randint(1, 4)
    lengths = [rng.randint(0, steps) for _ in range(batch)]
    crf = CRF(k, random_constraints(rng, k)).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(batch, steps, k, dtype=torch.float64) * scale
    mask = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return crf, emissions, mask, lengths


def assert_close(actual: float, expected: float) -> None:
    if expected == NEG_INF:
        assert actual == NEG_INF
    else:
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_log_partition_marginals_and_viterbi_match_brute_force(scale: float) -> None:
    for seed in range(150):
        crf, emissions, mask, lengths = random_case(seed, scale)
        log_z = crf.log_partition(emissions, mask).detach()
        marginals = crf.marginals(emissions, mask)
        paths, scores = crf.decode(emissions, mask)
        best_paths = CRF.to_lists(paths, mask)
        for b, length in enumerate(lengths):
            if length == 0:
                assert log_z[b] == 0 and scores[b] == 0 and best_paths[b] == []
                assert marginals[b].abs().sum() == 0
                continue
            exp_z, exp_path, exp_score, exp_marg = brute_force(crf, emissions[b], length)
            assert_close(float(log_z[b]), exp_z)
            assert_close(float(scores[b]), exp_score)
            if exp_marg is None:
                continue
            padded = best_paths[b] + [0] * (emissions.shape[1] - length)
            path_score = crf.score(emissions[b : b + 1], torch.tensor([padded]), mask[b : b + 1])
            assert float(path_score.detach()) == pytest.approx(exp_score)
            assert torch.allclose(marginals[b, :length], exp_marg, atol=1e-9)
            assert marginals[b, length:].abs().sum() == 0


def test_nll_with_partial_labels_and_candidates_matches_brute_force() -> None:
    for seed in range(150):
        crf, emissions, mask, lengths = random_case(seed)
        rng = random.Random(seed)
        k = crf.num_tags
        tags = torch.full(mask.shape, -1, dtype=torch.long)
        candidates = torch.rand(emissions.shape, generator=torch.Generator().manual_seed(seed))
        candidates = candidates < 0.6
        fixed_sets = []
        for b, length in enumerate(lengths):
            sets = []
            for t in range(length):
                if rng.random() < 0.5:
                    tags[b, t] = rng.randrange(k)
                    sets.append({int(tags[b, t])})
                else:
                    sets.append({j for j in range(k) if candidates[b, t, j]})
            fixed_sets.append(sets)
        for use_candidates in (False, True):
            given = candidates if use_candidates else None
            nll = crf.nll(emissions, tags, mask, given, infeasible="inf")
            infeasible = [b for b in range(len(lengths)) if nll[b] == float("inf")]
            if infeasible:
                with pytest.raises(ValueError, match=f"of row {infeasible[0]} "):
                    crf.nll(emissions, tags, mask, given)
            else:
                assert torch.equal(crf.nll(emissions, tags, mask, given), nll)
            for b, length in enumerate(lengths):
                if length == 0:
                    assert nll[b] == 0
                    continue
                sets = fixed_sets[b]
                if not use_candidates:
                    sets = [
                        s if int(tags[b, t]) >= 0 else set(range(k)) for t, s in enumerate(sets)
                    ]
                log_z = brute_force(crf, emissions[b], length)[0]
                log_z_obs = brute_force(crf, emissions[b], length, sets)[0]
                if log_z_obs == NEG_INF:
                    assert nll[b] == float("inf")
                else:
                    assert float(nll[b].detach()) == pytest.approx(
                        log_z - log_z_obs, rel=1e-9, abs=1e-9
                    )


def test_fully_observed_nll_is_log_z_minus_path_score() -> None:
    for seed in range(100):
        crf, emissions, mask, lengths = random_case(seed)
        paths, _ = crf.decode(emissions, mask)
        tags = paths.clamp(min=0)  # rows with no allowed path at all decode to forbidden tags
        nll = crf.nll(emissions, tags, mask, infeasible="inf")
        for b, length in enumerate(lengths):
            if length == 0:
                continue
            log_z, _, best, _ = brute_force(crf, emissions[b], length)
            if log_z > NEG_INF:
                assert float(nll[b].detach()) == pytest.approx(log_z - best, rel=1e-9, abs=1e-9)


def tutorial_crf(transitions: list[list[float]]) -> CRF:
    """The tutorials' convention: start scores are row 0, end scores are column 1."""
    trans = torch.tensor(transitions, dtype=torch.float64)
    crf = CRF(trans.shape[0]).double()
    with torch.no_grad():
        crf.transitions.copy_(trans)
        crf.start_transitions.copy_(trans[0])
        crf.end_transitions.copy_(trans[:, 1])
    return crf


def test_tutorial_log_partition() -> None:
    crf = tutorial_crf([[0.3, 0.1, 0.1], [0.8, 0.2, 0.2], [0.3, 0.7, 0.7]])
    emissions = torch.tensor(
        [[[-0.4554, 0.4215, 0.12], [0.4058, -0.5081, 0.21], [0.2058, 0.5081, 0.02]]],
        dtype=torch.float64,
    )
    assert float(crf.log_partition(emissions).detach()) == pytest.approx(5.0607, abs=1e-4)


def test_tutorial_viterbi() -> None:
    crf = tutorial_crf(
        [
            [-1e4, -9.3, 0.6, 0.1, 0.6],
            [-1e4, -1e4, -1e4, -1e4, -1e4],
            [-1e4, -2, -6, 0.9, 0.1],
            [-1e4, 0.2, -4, -5, 0.3],
            [-1e4, 0.5, 0.3, -6, 0.2],
        ]
    )
    emissions = torch.tensor(
        [
            [
                [-0.2196, -1.4047, 0.9992, 0.1948, 0.11],
                [-0.2401, 0.4565, 0.3464, -0.1856, 0.2622],
                [-0.3361, 0.1828, -0.3463, -0.2874, 0.2696],
            ]
        ],
        dtype=torch.float64,
    )
    paths, scores = crf.decode(emissions)
    assert paths.tolist() == [[2, 3, 4]]
    assert float(scores) == pytest.approx(3.3832, abs=1e-4)


def test_gradients_match_finite_differences() -> None:
    for seed in range(12):
        crf, emissions, mask, lengths = random_case(seed)
        tags = torch.randint(0, crf.num_tags, mask.shape)
        tags[torch.rand(mask.shape) < 0.3] = -1
        params = {name: p.detach().clone() for name, p in crf.named_parameters()}
        names = list(params)

        def nll(e, *values, tags=tags):
            params = dict(zip(names, values))
            out = functional_call(crf, params, (e, tags, mask), {"infeasible": "inf"})
            return out.masked_fill(~torch.isfinite(out), 0.0)

        inputs = (emissions.requires_grad_(),) + tuple(v.requires_grad_() for v in params.values())
        assert torch.autograd.gradcheck(nll, inputs)
        raw = [v.detach().clone().requires_grad_() for v in params.values()]
        assert torch.autograd.gradcheck(
            lambda e, trans, start, end: LogPartition.apply(e, trans, start, end, mask),
            (emissions, *raw),
        )


def test_underflowing_rows_take_the_log_space_path() -> None:
    labels = ["A", "B"]
    crf = CRF(5, allowed_transitions(tag_names(labels), "BIO")).double()
    emissions = torch.zeros(2, 3, 5, dtype=torch.float64)
    emissions[1, 0, 1] = 2000.0  # B-A first, then I-A wins by far only after B-A
    emissions[1, 1, 2] = 2000.0
    trans, start, end = (s.detach() for s in crf._scores(torch.float64))
    state = scaled_forward(emissions, trans, start, end, torch.ones(2, 3, dtype=torch.bool))
    assert state.bad.tolist() == [False, False]
    emissions[1, 0, 1] = -2000.0
    state = scaled_forward(emissions, trans, start, end, torch.ones(2, 3, dtype=torch.bool))
    assert state.bad.tolist() == [False, True]
    exp_z = brute_force(crf, emissions[1], 3)[0]
    assert float(crf.log_partition(emissions)[1].detach()) == pytest.approx(exp_z, rel=1e-12)


@pytest.mark.parametrize("constrained", [False, True])
def test_long_sequences_with_huge_emissions_stay_finite(constrained: bool) -> None:
    torch.manual_seed(0)
    tags = tag_names(["PER", "ORG", "LOC", "MISC"])
    crf = CRF(len(tags), allowed_transitions(tags, "BIO") if constrained else None)
    emissions = (torch.randn(2, 5000, len(tags)) * 1e3).requires_grad_()
    mask = torch.ones(2, 5000, dtype=torch.bool)
    mask[1, 3000:] = False
    gold = torch.zeros(2, 5000, dtype=torch.long)
    gold[:, 100:2000] = -1
    loss = crf.nll(emissions, gold, mask)
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    loss.sum().backward()
    assert torch.isfinite(emissions.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in crf.parameters())
    paths, scores = crf.decode(emissions, mask)
    assert torch.isfinite(scores).all()
    for path in CRF.to_lists(paths, mask):
        assert is_valid([tags[i] for i in path]) or not constrained
    marginals = crf.marginals(emissions, mask)
    assert torch.allclose(marginals.sum(-1), mask.float(), atol=1e-4)


def test_bio_constraints_hold_whatever_the_emissions() -> None:
    tags = tag_names(["PER", "ORG", "LOC"])
    crf = CRF(len(tags), allowed_transitions(tags, "BIO"))
    with torch.no_grad():
        crf.transitions.normal_(0, 50)
        crf.start_transitions.normal_(0, 50)
    for seed in range(50):
        torch.manual_seed(seed)
        emissions = torch.randn(8, 12, len(tags)) * 10 ** (seed % 4)
        emissions[:, :, 2::2] += 100.0  # push hard towards I- tags
        mask = torch.arange(12).unsqueeze(0) < torch.randint(0, 13, (8, 1))
        paths, _ = crf.decode(emissions, mask)
        for path in CRF.to_lists(paths, mask):
            assert is_valid([tags[i] for i in path])
        marginals = crf.marginals(emissions, mask)
        assert marginals[:, 0, 2::2].abs().max() == 0  # never start with I-


def test_forbidden_moves_stay_forbidden_after_training() -> None:
    tags = tag_names(["PER"])
    crf = CRF(len(tags), allowed_transitions(tags, "BIO"))
    optimizer = torch.optim.SGD(crf.parameters(), lr=1.0)
    emissions = torch.zeros(1, 2, 3)
    for _ in range(20):
        optimizer.zero_grad()
        crf.nll(emissions, torch.tensor([[0, 2]]), None, infeasible="inf")  # O then I-PER
        loss = crf.nll(emissions, torch.tensor([[1, 2]]))
        loss.sum().backward()
        optimizer.step()
    marginals = crf.marginals(torch.zeros(1, 2, 3))
    assert marginals[0, 0, 2] == 0
    forbidden = crf.nll(emissions, torch.tensor([[0, 2]]), infeasible="inf").detach()
    assert float(forbidden) == float("inf")


def test_float32_and_float64_agree() -> None:
    crf, emissions, mask, _ = random_case(3)
    crf32 = CRF(crf.num_tags)
    crf32.load_state_dict({k: v.float() for k, v in crf.state_dict().items()})
    assert torch.allclose(
        crf32.log_partition(emissions.float(), mask).double(),
        crf.log_partition(emissions, mask),
        atol=1e-4,
    )


def test_bad_input_is_named() -> None:
    crf = CRF(3)
    with pytest.raises(ValueError, match="emissions must have shape"):
        crf.log_partition(torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="mask must be a bool"):
        crf.log_partition(torch.zeros(2, 4, 3), torch.ones(2, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="left-aligned"):
        crf.log_partition(torch.zeros(1, 3, 3), torch.tensor([[False, True, True]]))
    with pytest.raises(ValueError, match="out of range"):
        crf.nll(torch.zeros(1, 2, 3), torch.tensor([[0, 3]]))
    with pytest.raises(TypeError, match="floating point"):
        crf.decode(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no start or no end"):
        CRF(2, Constraints([[True, True]] * 2, [False, False], [True, True]))
    with pytest.raises(ValueError, match="Unknown tag scheme"):
        allowed_transitions(["O"], "IOBX")


def test_biluo_constraints() -> None:
    tags = tag_names(["X"], "BILUO")
    assert tags == ["O", "B-X", "I-X", "L-X", "U-X"]
    assert is_valid(["B-X", "I-X", "L-X", "U-X", "O"], "BILUO")
    assert not is_valid(["B-X", "O"], "BILUO")
    assert not is_valid(["I-X"], "BILUO")
    assert not is_valid(["B-X"], "BILUO")
    assert not is_valid(["O", "I-X"], "BIO")
    assert is_valid(["B-X", "I-X"], "BIO")


def test_fully_observed_nll_gradients_match_finite_differences() -> None:
    for seed in range(12):
        crf, emissions, mask, _ = random_case(seed)
        tags = torch.randint(0, crf.num_tags, mask.shape)  # may take forbidden moves: nll inf
        params = {name: p.detach().clone() for name, p in crf.named_parameters()}
        names = list(params)

        def nll(e, *values, tags=tags):
            params = dict(zip(names, values))
            out = functional_call(crf, params, (e, tags, mask), {"infeasible": "inf"})
            return out.masked_fill(~torch.isfinite(out), 0.0)

        inputs = (emissions.requires_grad_(),) + tuple(v.requires_grad_() for v in params.values())
        assert torch.autograd.gradcheck(nll, inputs)


def test_gold_nll_gradients_on_underflowing_rows_match_log_space_autograd() -> None:
    crf = CRF(5, allowed_transitions(tag_names(["A", "B"]), "BIO")).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(3, 4, 5, dtype=torch.float64)
    emissions[1, 0, 1], emissions[1, 1, 2] = -2000.0, 2000.0  # row 1 underflows (see above)
    mask = torch.tensor([[True] * 4, [True] * 3 + [False], [True, True, False, False]])
    tags = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0], [3, 4, 0, 0]])
    trans, start, end = (s.detach() for s in crf._scores(torch.float64))
    assert scaled_forward(emissions, trans, start, end, mask).bad.tolist() == [False, True, False]
    emissions.requires_grad_()
    crf.nll(emissions, tags, mask).sum().backward()
    got = [emissions.grad] + [p.grad for p in crf.parameters()]
    leaves = [x.detach().clone().requires_grad_() for x in (emissions, *crf.parameters())]
    allowed = (crf.allowed, crf.allowed_start, crf.allowed_end)
    scores = [x.masked_fill(~ok, NEG_INF) for x, ok in zip(leaves[1:], allowed)]
    log_z = reference_log_z(leaves[0], *scores, mask)
    (log_z - path_score(leaves[0], tags, mask, *scores)).sum().backward()
    for actual, leaf in zip(got, leaves):
        assert torch.allclose(actual, leaf.grad, atol=1e-9)


def test_nll_without_autograd_matches_nll_with_it() -> None:
    for seed in range(20):
        crf, emissions, mask, _ = random_case(seed)
        tags = torch.randint(0, crf.num_tags, mask.shape)
        with_grad = crf.nll(emissions.requires_grad_(), tags, mask, infeasible="inf")
        with torch.no_grad():
            without = crf.nll(emissions, tags, mask, infeasible="inf")
        assert torch.equal(with_grad.detach(), without)


def test_padding_values_change_nothing() -> None:
    crf = CRF(5, allowed_transitions(tag_names(["A", "B"]), "BIO")).double()
    torch.manual_seed(0)
    emissions = torch.randn(4, 6, 5, dtype=torch.float64)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([[6], [3], [1], [0]])
    gold = torch.tensor([[0, 1, 2, 0, 3, 4]] * 4)  # O B-A I-A O B-B I-B
    tags = gold.clone()
    tags[:, :2] = -1  # partial labels too
    garbage = emissions.masked_fill(~mask.unsqueeze(-1), float("nan"))
    garbage[1, 4] = float("inf")
    results = []
    for e in (emissions, garbage):
        e = e.clone().requires_grad_()
        nll = crf.nll(e, tags, mask) + crf.nll(e, gold, mask)
        nll.sum().backward()
        paths, scores = crf.decode(e, mask)
        marginals = crf.marginals(e, mask)
        best_paths, best_scores = crf.nbest(e, mask, k=4)
        results.append((nll, e.grad, paths, scores, marginals, best_paths, best_scores))
    for clean, noisy in zip(*results):
        assert torch.equal(clean, noisy)


def test_agrees_with_pytorch_crf() -> None:
    torchcrf = pytest.importorskip("torchcrf")
    for seed, (batch, steps, k) in enumerate([(5, 7, 3), (16, 12, 9), (3, 30, 37), (1, 1, 2)]):
        torch.manual_seed(seed)
        crf = CRF(k).double()
        with torch.no_grad():
            for p in crf.parameters():
                p.normal_()
        theirs = torchcrf.CRF(k, batch_first=True).double()
        theirs.load_state_dict({name: p.detach() for name, p in crf.named_parameters()})
        emissions = torch.randn(batch, steps, k, dtype=torch.float64) * 3
        lengths = torch.randint(1, steps + 1, (batch,))
        mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
        tags = torch.randint(0, k, (batch, steps))
        grads = []
        for module, loss in ((crf, crf.nll), (theirs, lambda *a: -theirs(*a, reduction="none"))):
            e = emissions.clone().requires_grad_()
            nll = loss(e, tags, mask)
            nll.sum().backward()
            named = dict(module.named_parameters())
            params = [named[n] for n in sorted(named)]  # pytorch-crf leaves unused ones at None
            param_grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            grads.append([nll.detach(), e.grad, *param_grads])
        for ours, expected in zip(*grads):
            assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-9)
        paths, _ = crf.decode(emissions, mask)
        assert CRF.to_lists(paths, mask) == theirs.decode(emissions, mask)


def ranked_paths(crf: CRF, emissions: torch.Tensor, length: int) -> list[tuple[float, tuple]]:
    """Every allowed path of one sequence with its float64 score, in `nbest`'s documented order.

    Best first; equal scores by the tags read from the end, lowest first.
    """
    trans, start, end = (s.detach().double().tolist() for s in crf._scores(torch.float64))
    e = emissions.detach().double().tolist()
    ranked = []
    for path in itertools.product(range(crf.num_tags), repeat=length):
        if length == 0:
            ranked.append((0.0, path))
            continue
        score = start[path[0]] + end[path[-1]] + sum(e[t][tag] for t, tag in enumerate(path))
        score += sum(trans[a][b] for a, b in zip(path, path[1:]))
        if score > NEG_INF:
            ranked.append((score, path))
    return sorted(ranked, key=lambda item: (-item[0], item[1][::-1]))


def nbest_case(seed: int, scheme: str | None, dtype: torch.dtype, integer: bool = False):
    """A CRF (unconstrained, or BIO/BILUO over 1-2 labels), padded emissions and a random k.

    With `integer`, parameters and emissions are small integers: many paths tie exactly.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    if scheme is None:
        constraints, num_tags = None, rng.randint(1, 4)
    else:
        names = tag_names(["A", "B"][: rng.randint(1, 2)], scheme)
        constraints, num_tags = allowed_transitions(names, scheme), len(names)
    steps = rng.randint(0, 5 if num_tags <= 5 else 3)
    batch = rng.randint(1, 5)
    lengths = [rng.randint(0, steps) for _ in range(batch)]
    lengths[rng.randrange(batch)] = min(steps, rng.choice([0, 1]))
    crf = CRF(num_tags, constraints).to(dtype)
    emissions = torch.randn(batch, steps, num_tags).to(dtype)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    if integer:
        emissions = torch.randint(-1, 2, emissions.shape).to(dtype)
        with torch.no_grad():
            for p in crf.parameters():
                p.copy_(torch.randint(-1, 2, p.shape))
    mask = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return crf, emissions, mask, lengths, rng.choice([1, 2, 3, 5, 8, 13])


def check_nbest_row(crf, emissions, mask, b, paths, scores, expected, tol) -> None:
    """One row of `nbest` output against its brute-force ranking."""
    k, length = scores.shape[1], int(mask[b].sum())
    want = [score for score, _ in expected[:k]] + [NEG_INF] * max(0, k - len(expected))
    got = scores[b].tolist()
    assert got == sorted(got, reverse=True)
    for actual, score in zip(got, want):
        if score == NEG_INF:
            assert actual == NEG_INF
        else:
            assert actual == pytest.approx(score, rel=tol, abs=tol)
    allowed = {path for _, path in expected}
    found = [tuple(paths[b, n, :length].tolist()) for n in range(k) if got[n] > NEG_INF]
    assert len(set(found)) == len(found) == min(k, len(expected))
    assert all(path in allowed for path in found)
    assert (paths[b, :, length:] == -1).all()
    for n in range(len(found), k):
        assert (paths[b, n] == -1).all()
    if found:
        rows = paths[b, : len(found)]  # shape: (n, T)
        copies = emissions[b : b + 1].expand(len(found), -1, -1)
        own = crf.score(copies, rows, mask[b : b + 1].expand(len(found), -1)).detach()
        assert own.tolist() == pytest.approx(got[: len(found)], rel=tol, abs=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scheme", [None, "BIO", "BILUO"])
def test_nbest_matches_brute_force(scheme: str | None, dtype: torch.dtype) -> None:
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    for seed in range(60):
        crf, emissions, mask, lengths, k = nbest_case(seed, scheme, dtype)
        paths, scores = crf.nbest(emissions, mask, k=k)
        assert paths.shape == (len(lengths), k, emissions.shape[1]) and paths.dtype == torch.long
        assert scores.shape == (len(lengths), k) and scores.dtype == dtype
        for b, length in enumerate(lengths):
            check_nbest_row(
                crf, emissions, mask, b, paths, scores, ranked_paths(crf, emissions[b], length), tol
            )
            if length == 0:
                assert scores[b].tolist() == [0.0] + [NEG_INF] * (k - 1)
        first_paths, first_scores = crf.nbest(emissions, mask, k=1)
        best_paths, best_scores = crf.decode(emissions, mask)
        assert torch.equal(first_paths[:, 0], best_paths)
        assert torch.equal(first_scores[:, 0], best_scores)
        assert torch.equal(paths[:, 0], best_paths) and torch.equal(scores[:, 0], best_scores)
        # nbest(k=1) takes decode's Viterbi; the k-best Viterbi itself agrees with it too.
        with torch.no_grad():
            merged_paths, merged_scores = kbest_viterbi(emissions, mask, *crf._scores(dtype), 1)
        assert torch.equal(merged_paths[:, 0], best_paths)
        assert torch.equal(merged_scores[:, 0], best_scores)


@pytest.mark.parametrize("scheme", [None, "BIO", "BILUO"])
def test_nbest_ties_come_in_the_documented_order(scheme: str | None) -> None:
    for seed in range(60):
        crf, emissions, mask, lengths, k = nbest_case(seed, scheme, torch.float64, integer=True)
        paths, scores = crf.nbest(emissions, mask, k=k)
        for b, length in enumerate(lengths):
            expected = ranked_paths(crf, emissions[b], length)[:k]
            assert scores[b, : len(expected)].tolist() == [score for score, _ in expected]
            got = [tuple(paths[b, n, :length].tolist()) for n in range(len(expected))]
            assert got == [path for _, path in expected]
        best_paths, best_scores = crf.decode(emissions, mask)
        assert torch.equal(paths[:, 0], best_paths) and torch.equal(scores[:, 0], best_scores)


def test_nbest_all_tied_and_fewer_paths_than_k() -> None:
    crf = CRF(3).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.zero_()
    paths, scores = crf.nbest(torch.zeros(1, 3, 3, dtype=torch.float64), k=5)
    assert paths[0].tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert scores.tolist() == [[0.0] * 5]
    # BILUO, one token: only O and U-X may start and end a sequence.
    biluo = CRF(5, allowed_transitions(tag_names(["X"], "BILUO"), "BILUO"))
    emissions = torch.tensor([[[0.0, 9.0, 9.0, 9.0, 1.0]], [[0.0] * 5]])
    paths, scores = biluo.nbest(emissions, torch.tensor([[True], [False]]), k=4)
    assert paths.tolist() == [[[4], [0], [-1], [-1]], [[-1], [-1], [-1], [-1]]]
    assert scores[:, 2:].tolist() == [[NEG_INF] * 2] * 2 and scores[1, :2].tolist() == [0, NEG_INF]
    no_steps = biluo.nbest(torch.zeros(2, 0, 5), k=3)
    assert no_steps[0].shape == (2, 3, 0) and no_steps[1].tolist() == [[0, NEG_INF, NEG_INF]] * 2


def test_nbest_on_a_large_batch_is_batched_and_valid() -> None:
    torch.manual_seed(0)
    names = tag_names(["PER", "ORG", "LOC", "MISC"])
    crf = CRF(len(names), allowed_transitions(names, "BIO"))
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(64, 12, len(names)) * 3
    mask = torch.arange(12).unsqueeze(0) < torch.randint(0, 13, (64, 1))
    paths, scores = crf.nbest(emissions, mask, k=6)
    lists = CRF.nbest_to_lists(paths, scores, mask)
    for row, length, row_scores in zip(lists, mask.sum(1).tolist(), scores.tolist()):
        allowed = {0: 1, 1: 5}.get(length, 6)  # one empty path; O or B- first: 5 of length 1
        assert len(row) == allowed and len(set(map(tuple, row))) == len(row)
        assert all(len(path) == length and is_valid([names[i] for i in path]) for path in row)
        assert row_scores == sorted(row_scores, reverse=True)
    flat_mask = mask.repeat_interleave(6, 0)  # shape: (B k, T)
    flat_paths = paths.flatten(0, 1).clamp(min=0)  # missing paths scored as all O, unused
    flat = crf.score(emissions.repeat_interleave(6, 0), flat_paths, flat_mask)
    finite = scores.flatten() > NEG_INF
    assert torch.allclose(flat.detach()[finite], scores.flatten()[finite], atol=1e-4)
    best_paths, best_scores = crf.decode(emissions, mask)
    first = crf.nbest(emissions, mask, k=1)
    assert torch.equal(first[0][:, 0], best_paths) and torch.equal(first[1][:, 0], best_scores)


def test_path_probs_of_nbest_paths() -> None:
    for seed in range(40):
        scheme = ["BIO", "BILUO", None][seed % 3]
        crf, emissions, mask, lengths, k = nbest_case(seed, scheme, torch.float64)
        paths, scores = crf.nbest(emissions, mask, k=k)
        probs = crf.path_probs(emissions, scores, mask)
        assert probs.shape == scores.shape and (probs.sum(1) <= 1.0).all()
        log_z = crf.log_partition(emissions, mask).detach()
        for b, length in enumerate(lengths):
            ranked = ranked_paths(crf, emissions[b], length)
            expected = [math.exp(score - float(log_z[b])) for score, _ in ranked[:k]]
            expected += [0.0] * (k - len(expected))
            assert probs[b].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
            if len(ranked) <= k:
                assert float(probs[b].sum()) == pytest.approx(1.0, rel=1e-9)
        best = crf.path_probs(emissions, crf.decode(emissions, mask)[1], mask)
        assert torch.allclose(best, probs[:, 0], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="scores must have shape"):
        crf.path_probs(emissions, scores[:1, :, None], mask)


def test_nbest_to_lists_leaves_out_missing_paths() -> None:
    paths = torch.tensor([[[0, 1], [1, 1], [-1, -1]], [[-1, -1], [-1, -1], [-1, -1]]])
    scores = torch.tensor([[2.0, 1.0, NEG_INF], [0.0, NEG_INF, NEG_INF]])
    mask = torch.tensor([[True, True], [False, False]])
    assert CRF.nbest_to_lists(paths, scores, mask) == [[[0, 1], [1, 1]], [[]]]


def test_nbest_bad_k_is_named() -> None:
    crf = CRF(3)
    for k in (0, -2):
        with pytest.raises(ValueError, match="k >= 1"):
            crf.nbest(torch.zeros(1, 2, 3), k=k)
    with pytest.raises(TypeError):
        crf.nbest(torch.zeros(1, 2, 3), k=1.5)
    with pytest.raises(ValueError, match="emissions must have shape"):
        crf.nbest(torch.zeros(1, 2, 4), k=2)


def bio_crf(labels: list[str], scheme: str = "BIO") -> CRF:
    names = tag_names(labels, scheme)
    return CRF(len(names), allowed_transitions(names, scheme)).double()


def test_infeasible_gold_tags_raise_naming_row_position_and_move() -> None:
    crf = bio_crf(["PER"])  # O, B-PER, I-PER
    emissions = torch.randn(3, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 5, [True] * 2 + [False] * 3])
    gold = torch.tensor([[0, 1, 2, 0, 0], [1, 2, 0, 2, 0], [0, 0, 0, 0, 0]])
    message = "gold tags of row 1 break the constraints at position 3: tag 2 may not follow tag 0"
    with pytest.raises(ValueError, match=message + r"; pass infeasible='inf'"):
        crf.nll(emissions, gold, mask)
    with pytest.raises(ValueError, match=message):
        crf(emissions.requires_grad_(), gold, mask)  # forward, and with autograd
    gold[2, 0] = 2
    with pytest.raises(ValueError, match=r"row 1 .* position 3: .*\(2 rows in all: \[1, 2\]\)"):
        crf.nll(emissions, gold, mask)
    with pytest.raises(
        ValueError, match="row 0 break the constraints at position 0: tag 2 may not start"
    ):
        crf.nll(emissions[2:], gold[2:], mask[2:])
    biluo = bio_crf(["X"], "BILUO")  # O, B-X, I-X, L-X, U-X
    ends_open = torch.tensor([[0, 4, 1, 3]])
    ends_open_mask = torch.tensor([[True, True, True, False]])
    with pytest.raises(ValueError, match="row 0 .* position 2: tag 1 may not end a sequence"):
        biluo.nll(torch.zeros(1, 4, 5, dtype=torch.float64), ends_open, ends_open_mask)
    emissions = torch.zeros(1, 2, 3, dtype=torch.float64)
    emissions[0, 1, 1] = NEG_INF
    with pytest.raises(
        ValueError, match="row 0 have no path of finite score: .* tag 1 at position 1"
    ):
        crf.nll(emissions, torch.tensor([[0, 1]]))


def test_infeasible_partial_labels_raise_naming_the_row() -> None:
    crf = bio_crf(["PER"])
    emissions = torch.zeros(2, 3, 3, dtype=torch.float64)
    tags = torch.tensor([[0, 0, -1], [0, 2, -1]])
    with pytest.raises(
        ValueError, match="known tags of row 1 break .* position 1: tag 2 may not follow tag 0"
    ):
        crf.nll(emissions, tags, None)
    biluo = bio_crf(["X", "Y"], "BILUO")  # O, B-X, I-X, L-X, U-X, B-Y, I-Y, L-Y, U-Y
    tags = torch.tensor([[1, -1, 7], [0, -1, -1]])  # B-X, then I-X or L-X: neither before L-Y
    with pytest.raises(
        ValueError, match="no allowed path agrees with the known tags of row 0 up to position 2"
    ):
        biluo.nll(torch.zeros(2, 3, 9, dtype=torch.float64), tags)
    candidates = torch.ones(1, 2, 9, dtype=torch.bool)
    candidates[0, 1] = False
    candidates[0, 1, 1] = True  # the last token may only be B-X: it cannot end a sequence
    unknown = torch.full((1, 2), -1)
    with pytest.raises(
        ValueError, match="known tags and candidates of row 0 and ends at position 1"
    ):
        biluo.nll(torch.zeros(1, 2, 9, dtype=torch.float64), unknown, None, candidates)
    candidates[0, 1] = False
    candidates[0, 1, 2] = True  # I-X only, after a first token that may only be O
    candidates[0, 0] = False
    candidates[0, 0, 0] = True
    with pytest.raises(ValueError, match="known tags and candidates of row 0 up to position 1"):
        biluo.nll(torch.zeros(1, 2, 9, dtype=torch.float64), unknown, None, candidates)
    assert biluo.nll(torch.zeros(1, 2, 9), unknown, None, candidates, infeasible="inf") == float(
        "inf"
    )


def test_infeasible_inf_opt_in_gives_inf_and_zero_gradient() -> None:
    crf = bio_crf(["PER"])
    emissions = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    gold = torch.tensor([[0, 1, 2], [0, 2, 2]])
    nll = crf.nll(emissions, gold, infeasible="inf")
    assert math.isfinite(float(nll[0].detach())) and float(nll[1].detach()) == float("inf")
    nll.masked_fill(torch.isinf(nll), 0.0).sum().backward()
    assert emissions.grad[1].abs().sum() == 0 and emissions.grad[0].abs().sum() > 0
    partial = torch.tensor([[0, -1, 2], [0, 2, -1]])
    assert crf.nll(emissions, partial, infeasible="inf")[1] == float("inf")
    with torch.no_grad(), pytest.raises(ValueError, match="row 1"):
        crf.nll(emissions, gold)
    with pytest.raises(ValueError, match="infeasible must be one of"):
        crf.nll(emissions, gold, infeasible="ignore")


def _brute_span_prob(crf, emissions, length, start, tags, after):
    """Sum of path probabilities over every allowed path of one row with the span's tags."""
    num_tags = emissions.shape[-1]
    log_z = crf.log_partition(emissions[:, :length]).item()
    total = 0.0
    for path in itertools.product(range(num_tags), repeat=length):
        if list(path[start : start + len(tags)]) != list(tags):
            continue
        end = start + len(tags)
        if after >= 0 and end < length and path[end] == after:
            continue
        score = crf.score(emissions[:, :length], torch.tensor([path])).item()
        if score > float("-inf"):
            total += math.exp(score - log_z)
    return total


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_span_probs_equal_brute_force(scheme: str) -> None:
    torch.manual_seed(3)
    tags = tag_names(["A", "B"], scheme)
    crf = CRF(len(tags), allowed_transitions(tags, scheme)).double()
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    lengths = [4, 2, 3]
    emissions = torch.randn(3, 4, len(tags), dtype=torch.float64) * 2
    mask = torch.arange(4) < torch.tensor(lengths).unsqueeze(1)
    begin, inside = tags.index("B-A"), tags.index("I-A")
    if scheme == "BIO":
        cases = [(0, 1, [begin, inside], inside), (1, 0, [begin], inside), (2, 2, [begin], inside)]
        cases.append((0, 0, [0], -1))  # a single O, no condition after it
    else:
        unit, last = tags.index("U-A"), tags.index("L-A")
        cases = [(0, 1, [begin, inside, last], -1), (1, 1, [unit], -1), (2, 0, [begin, last], -1)]
    rows = torch.tensor([row for row, *_ in cases])
    starts = torch.tensor([start for _, start, *_ in cases])
    width = max(len(span) for _, _, span, _ in cases)
    padded = torch.tensor([span + [-1] * (width - len(span)) for _, _, span, _ in cases])
    after = torch.tensor([a for *_, a in cases])
    got = crf.span_probs(emissions, mask, rows, starts, padded, after)
    for value, (row, start, span, excluded) in zip(got.tolist(), cases):
        want = _brute_span_prob(crf, emissions[row : row + 1], lengths[row], start, span, excluded)
        assert value == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_span_probs_reject_spans_outside_their_sequence() -> None:
    crf = CRF(3)
    emissions = torch.randn(1, 3, 3)
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="inside its sequence"):
        crf.span_probs(
            emissions, mask, torch.tensor([0]), torch.tensor([1]), torch.tensor([[1, 2]])
        )


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_piece_nbest_equals_brute_force_marginals(scheme: str) -> None:
    """The k best labellings of each piece by their probability under the whole sequence's
    CRF, which sums over every labelling of the rest."""
    torch.manual_seed(5)
    tags = tag_names(["A"], scheme)
    crf = CRF(len(tags), allowed_transitions(tags, scheme)).double()
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    lengths = [5, 3]
    emissions = torch.randn(2, 5, len(tags), dtype=torch.float64) * 2
    mask = torch.arange(5) < torch.tensor(lengths).unsqueeze(1)
    pieces = [(0, 0, 2), (0, 2, 5), (1, 0, 1), (1, 1, 3)]
    rows, starts, ends = (torch.tensor(column) for column in zip(*pieces))
    k = 4
    paths, log_probs = crf.piece_nbest(emissions, mask, rows, starts, ends, k)
    one_path, one_log_prob = crf.piece_nbest(emissions, mask, rows, starts, ends, 1)  # Viterbi
    assert torch.equal(one_path, paths[:, :1]) and torch.allclose(one_log_prob, log_probs[:, :1])
    for p, (row, start, end) in enumerate(pieces):
        length = lengths[row]
        log_z = crf.log_partition(emissions[row : row + 1, :length]).item()
        marginal: dict[tuple, float] = {}
        for path in itertools.product(range(len(tags)), repeat=length):
            score = crf.score(emissions[row : row + 1, :length], torch.tensor([path])).item()
            if score > float("-inf"):
                piece = tuple(path[start:end])
                marginal[piece] = marginal.get(piece, 0.0) + math.exp(score - log_z)
        best = sorted(marginal.values(), reverse=True)[:k]
        got = log_probs[p].exp().tolist()
        assert got[: len(best)] == pytest.approx(best, rel=1e-9)
        assert all(value == 0.0 for value in got[len(best) :])
        for rank, value in enumerate(best):
            piece = tuple(paths[p, rank, : end - start].tolist())
            assert marginal[piece] == pytest.approx(value, rel=1e-9)
            assert all(tag == -1 for tag in paths[p, rank, end - start :].tolist())


def test_forward_backward_messages_give_the_partition_at_every_position() -> None:
    """Prefix and suffix sums meet at every position of long rows (where unscaled sums
    would overflow) and past a row's end are `-inf`; an empty row has log Z = 0."""
    torch.manual_seed(11)
    tags = tag_names(["A", "B"], "BILUO")
    crf = CRF(len(tags), allowed_transitions(tags, "BILUO")).double()
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    lengths = torch.tensor([300, 1, 0, 157])
    emissions = torch.randn(4, 300, len(tags), dtype=torch.float64) * 20
    mask = torch.arange(300) < lengths.unsqueeze(1)
    messages = forward_backward(emissions, mask, *crf._scores(torch.float64))
    positions = torch.arange(-1, 301)
    for row, length in enumerate(lengths.tolist()):
        want = crf.log_partition(emissions[row : row + 1, :length]).item() if length else 0.0
        assert messages.log_z[row].item() == pytest.approx(want, rel=1e-12)
        rows = torch.full_like(positions, row)
        prefix, suffix = messages.prefix(rows, positions), messages.suffix(rows, positions)
        inside = (positions >= 0) & (positions < length)
        meet = torch.logsumexp(prefix[inside] + suffix[inside] - emissions[row, :length], -1)
        assert torch.allclose(meet, messages.log_z[row].expand(length), rtol=1e-12)
        assert bool((prefix[~inside] == NEG_INF).all() & (suffix[~inside] == NEG_INF).all())
