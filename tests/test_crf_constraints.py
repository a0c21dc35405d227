"""The CRF under per-token constraints (`candidates`) against brute-force enumeration of every
path that the scheme allows and the constraints admit; the tag sets built from spans against
the entities of every such path; impossible constraints named."""

import itertools
import math
import random

import numpy
import pytest
import torch

from spacy_bilstm_crf import CRF, allowed_transitions, tag_names
from spacy_bilstm_crf.nn.feasibility import ConstraintError, shortest_conflict
from spacy_bilstm_crf.tag_sets import TagSets, cut
from spacy_bilstm_crf.tags import is_valid, split_tag

NEG_INF = float("-inf")
SCHEMES = ["BIO", "BILUO"]


def entities_of(tags: list[str]) -> set[tuple[int, int, str]]:
    """The entities `(start, end, label)` of a valid tag sequence."""
    found, start = set(), None
    for i, tag in enumerate(tags + ["O"]):
        prefix, label = split_tag(tag)
        if start is not None and prefix not in ("I", "L"):
            found.add((start, i, split_tag(tags[start])[1]))
            start = None
        if prefix in ("B", "U"):
            start = i
        if prefix in ("L", "U"):
            found.add((start, i + 1, label))
            start = None
    return found


def make_crf(scheme: str, labels: list[str], seed: int) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(
        len(tag_names(labels, scheme)), allowed_transitions(tag_names(labels, scheme), scheme)
    )
    crf = crf.double()
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    return crf


def random_sets(rng: random.Random, labels: list[str], length: int, scheme: str) -> numpy.ndarray:
    """Tag sets from a few random facts (some contradicting each other), or random bools."""
    if rng.random() < 0.25:
        return numpy.asarray([[rng.random() < 0.6 for _ in tag_names(labels, scheme)]] * length)
    sets = TagSets(labels, length, scheme)
    for _ in range(rng.randint(0, 2)):
        start = rng.randrange(length)
        end = rng.randint(start + 1, min(length, start + 3))
        kind = rng.choice(["entity", "outside", "inside", "begins"])
        if kind == "entity":
            sets.entity(start, end, rng.choice(labels))
        elif kind == "outside":
            sets.outside(start, end)
        elif kind == "inside":
            sets.inside(start, rng.sample(labels, rng.randint(1, len(labels))))
        else:
            sets.begins(start, None if rng.random() < 0.5 else [rng.choice(labels)])
    return sets.allowed


def lattice(seed: int, scheme: str):
    """A CRF, emissions, mask and candidates `(B, T, K)` over rows of lengths 0..4."""
    rng = random.Random(seed)
    labels = ["A", "B"][: rng.randint(1, 2)]
    crf = make_crf(scheme, labels, seed)
    steps, batch = rng.randint(1, 4), rng.randint(1, 4)
    lengths = [rng.randint(0, steps) for _ in range(batch)]
    emissions = torch.randn(batch, steps, crf.num_tags, dtype=torch.float64) * 2
    mask = torch.arange(steps) < torch.tensor(lengths).unsqueeze(1)
    candidates = torch.ones(batch, steps, crf.num_tags, dtype=torch.bool)
    for b, length in enumerate(lengths):
        if length:
            candidates[b, :length] = torch.from_numpy(random_sets(rng, labels, length, scheme))
        candidates[b, length:] = torch.rand(steps - length, crf.num_tags) < 0.5  # ignored
    return crf, emissions, mask, candidates, lengths


def admitted(crf: CRF, emissions: torch.Tensor, candidates: torch.Tensor, length: int):
    """Every path of one row that the scheme allows and the candidates admit, with its score,
    best first (ties in the CRF's documented order: tags read from the end, lowest first)."""
    trans, start, end = (s.detach() for s in crf._scores(torch.float64))
    found = []
    for path in itertools.product(range(crf.num_tags), repeat=length):
        if not all(candidates[t, tag] for t, tag in enumerate(path)):
            continue
        score = float(
            start[path[0]] + end[path[-1]] + sum(emissions[t, j] for t, j in enumerate(path))
        )
        score += float(sum(trans[a, b] for a, b in zip(path, path[1:])))
        if score > NEG_INF:
            found.append((score, path))
    return sorted(found, key=lambda item: (-item[0], item[1][::-1]))


def log_sum(scores: list[float]) -> float:
    top = max(scores)
    return top + math.log(sum(math.exp(s - top) for s in scores))


def feasible_lattices(scheme: str, count: int):
    """`count` lattices whose rows all have an admitted path, with each row's paths."""
    seed = 0
    while count:
        seed += 1
        crf, emissions, mask, candidates, lengths = lattice(seed, scheme)
        paths = [
            admitted(crf, emissions[b], candidates[b], n) if n else []
            for b, n in enumerate(lengths)
        ]
        if all(found or not n for found, n in zip(paths, lengths)):
            count -= 1
            yield crf, emissions, mask, candidates, lengths, paths


@pytest.mark.parametrize("scheme", SCHEMES)
def test_decode_log_partition_marginals_and_path_probs_equal_brute_force(scheme: str) -> None:
    for crf, emissions, mask, candidates, lengths, ranked in feasible_lattices(scheme, 60):
        paths, scores = crf.decode(emissions, mask, candidates)
        log_z = crf.log_partition(emissions, mask, candidates).detach()
        marginals = crf.marginals(emissions, mask, candidates)
        probs = crf.path_probs(emissions, scores, mask, candidates)
        for b, length in enumerate(lengths):
            if not length:
                assert log_z[b] == 0 and scores[b] == 0 and marginals[b].abs().sum() == 0
                continue
            want_z = log_sum([score for score, _ in ranked[b]])
            assert float(log_z[b]) == pytest.approx(want_z, rel=1e-9, abs=1e-9)
            assert float(scores[b]) == pytest.approx(ranked[b][0][0], rel=1e-9, abs=1e-9)
            assert tuple(paths[b, :length].tolist()) == ranked[b][0][1]
            assert float(probs[b]) == pytest.approx(math.exp(ranked[b][0][0] - want_z), rel=1e-9)
            want = torch.zeros(length, crf.num_tags, dtype=torch.float64)
            for score, path in ranked[b]:
                want[torch.arange(length), torch.tensor(path)] += math.exp(score - want_z)
            assert torch.allclose(marginals[b, :length], want, atol=1e-9)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_nbest_equals_brute_force(scheme: str) -> None:
    for crf, emissions, mask, candidates, lengths, ranked in feasible_lattices(scheme, 60):
        for k in (1, 3, 7):
            paths, scores = crf.nbest(emissions, mask, k=k, candidates=candidates)
            probs = crf.path_probs(emissions, scores, mask, candidates)
            for b, length in enumerate(lengths):
                if not length:
                    assert scores[b].tolist() == [0.0] + [NEG_INF] * (k - 1)
                    continue
                want = ranked[b][:k]
                got = [tuple(paths[b, n, :length].tolist()) for n in range(len(want))]
                assert got == [path for _, path in want]
                assert scores[b, : len(want)].tolist() == pytest.approx([s for s, _ in want])
                assert (scores[b, len(want) :] == NEG_INF).all()
                assert (paths[b, len(want) :] == -1).all()
                log_z = log_sum([score for score, _ in ranked[b]])
                expected = [math.exp(score - log_z) for score, _ in want]
                assert probs[b, : len(want)].tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_span_probs_equal_brute_force(scheme: str) -> None:
    rng = random.Random(7)
    for crf, emissions, mask, candidates, lengths, ranked in feasible_lattices(scheme, 60):
        cases = []
        for b, length in enumerate(lengths):
            for _ in range(3 if length else 0):
                start = rng.randrange(length)
                size = rng.randint(1, length - start)
                tags = [rng.randrange(crf.num_tags) for _ in range(size)]
                if rng.random() < 0.5:  # often one of the admitted paths' own pieces
                    tags = list(rng.choice(ranked[b])[1][start : start + size])
                cases.append((b, start, tags, rng.choice([-1, rng.randrange(crf.num_tags)])))
        if not cases:
            continue
        width = max(len(tags) for _, _, tags, _ in cases)
        got = crf.span_probs(
            emissions,
            mask,
            torch.tensor([b for b, *_ in cases]),
            torch.tensor([start for _, start, _, _ in cases]),
            torch.tensor([tags + [-1] * (width - len(tags)) for _, _, tags, _ in cases]),
            torch.tensor([after for *_, after in cases]),
            candidates,
        )
        for value, (b, start, tags, after) in zip(got.tolist(), cases):
            log_z = log_sum([score for score, _ in ranked[b]])
            end = start + len(tags)
            want = sum(
                math.exp(score - log_z)
                for score, path in ranked[b]
                if list(path[start:end]) == tags and not (end < lengths[b] and path[end] == after)
            )
            assert value == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_piece_nbest_equals_brute_force(scheme: str) -> None:
    rng = random.Random(9)
    for crf, emissions, mask, candidates, lengths, ranked in feasible_lattices(scheme, 60):
        pieces = []
        for b, length in enumerate(lengths):
            if length:
                start = rng.randrange(length)
                pieces.append((b, start, rng.randint(start + 1, length)))
        if not pieces:
            continue
        rows, starts, ends = (torch.tensor(column) for column in zip(*pieces))
        k = 3
        paths, log_probs = crf.piece_nbest(emissions, mask, rows, starts, ends, k, candidates)
        for p, (b, start, end) in enumerate(pieces):
            log_z = log_sum([score for score, _ in ranked[b]])
            marginal: dict[tuple, float] = {}
            for score, path in ranked[b]:
                marginal[path[start:end]] = marginal.get(path[start:end], 0.0) + math.exp(
                    score - log_z
                )
            best = sorted(marginal.values(), reverse=True)[:k]
            got = log_probs[p].exp().tolist()
            assert got[: len(best)] == pytest.approx(best, rel=1e-9)
            assert all(value == 0.0 for value in got[len(best) :])
            for rank in range(len(best)):
                piece = tuple(paths[p, rank, : end - start].tolist())
                assert marginal[piece] == pytest.approx(best[rank], rel=1e-9)


def test_all_true_candidates_change_nothing() -> None:
    crf = make_crf("BILUO", ["A", "B"], 3)
    emissions = torch.randn(5, 7, crf.num_tags, dtype=torch.float64)
    mask = torch.arange(7) < torch.tensor([[7], [3], [0], [1], [6]])
    every = torch.ones_like(emissions, dtype=torch.bool)
    assert all(
        torch.equal(a, b)
        for a, b in zip(crf.decode(emissions, mask), crf.decode(emissions, mask, every))
    )
    assert torch.equal(crf.marginals(emissions, mask), crf.marginals(emissions, mask, every))
    assert torch.equal(
        crf.log_partition(emissions, mask), crf.log_partition(emissions, mask, every)
    )
    plain, fixed = (
        crf.nbest(emissions, mask, k=4),
        crf.nbest(emissions, mask, k=4, candidates=every),
    )
    assert torch.equal(plain[0], fixed[0]) and torch.equal(plain[1], fixed[1])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_operation_names_rows_that_no_path_satisfies(scheme: str) -> None:
    seen = 0
    for seed in range(400):
        crf, emissions, mask, candidates, lengths = lattice(seed, scheme)
        dead = [
            b
            for b, n in enumerate(lengths)
            if n and not admitted(crf, emissions[b], candidates[b], n)
        ]
        if not dead:
            continue
        seen += 1
        rows, starts, ends = torch.tensor([dead[0]]), torch.tensor([0]), torch.tensor([1])
        calls = [
            lambda: crf.decode(emissions, mask, candidates),
            lambda: crf.nbest(emissions, mask, k=2, candidates=candidates),
            lambda: crf.log_partition(emissions, mask, candidates),
            lambda: crf.marginals(emissions, mask, candidates),
            lambda: crf.span_probs(
                emissions, mask, rows, starts, torch.tensor([[0]]), None, candidates
            ),
            lambda: crf.piece_nbest(emissions, mask, rows, starts, ends, 2, candidates),
        ]
        for call in calls:
            with pytest.raises(
                ConstraintError, match=f"row {dead[0]} leave no allowed path"
            ) as info:
                call()
            error = info.value
            assert error.row == dead[0] and 0 <= error.first <= error.last < lengths[dead[0]]
            # The named stretch alone admits no path; one token fewer at its start does.
            sets = candidates[error.row, error.first : error.last + 1]
            assert not _stretch_admits(
                crf, sets, error.first == 0, error.last == lengths[dead[0]] - 1
            )
            if error.first < error.last:
                assert _stretch_admits(crf, sets[1:], False, error.last == lengths[dead[0]] - 1)
    assert seen >= 20


def _stretch_admits(crf: CRF, sets: torch.Tensor, at_start: bool, at_end: bool) -> bool:
    for path in itertools.product(range(crf.num_tags), repeat=len(sets)):
        if not all(sets[t, tag] for t, tag in enumerate(path)):
            continue
        moves = all(crf.allowed[a, b] for a, b in zip(path, path[1:]))
        if (
            moves
            and (not at_start or crf.allowed_start[path[0]])
            and (not at_end or crf.allowed_end[path[-1]])
        ):
            return True
    return False


def test_a_forced_entity_overlapping_another_is_named_with_its_tokens() -> None:
    labels = ["PER", "LOC"]
    crf = make_crf("BILUO", labels, 0)
    sets = TagSets(labels, 6, "BILUO").entity(1, 3, "PER").entity(2, 4, "LOC")
    candidates = torch.from_numpy(sets.allowed).unsqueeze(0)
    with pytest.raises(ConstraintError, match=r"row 0 leave no allowed path through position 2 "):
        crf.decode(torch.zeros(1, 6, crf.num_tags, dtype=torch.float64), None, candidates)
    sets = TagSets(labels, 3, "BIO").inside(0, ["PER"]).begins(2)
    sets.allowed[1] = False
    sets.allowed[1, tag_names(labels).index("I-LOC")] = True  # I-LOC after PER: a forbidden move
    bio = make_crf("BIO", labels, 0)
    with pytest.raises(ConstraintError, match=r"positions 0\.\.1 \(allowed tag ids at each"):
        bio.decode(torch.zeros(1, 3, bio.num_tags), None, torch.from_numpy(sets.allowed)[None])


def test_shortest_conflict_at_the_end_of_a_sequence() -> None:
    tags = tag_names(["X"], "BILUO")
    rules = [numpy.asarray(x) for x in allowed_transitions(tags, "BILUO")]
    options = numpy.ones((4, len(tags)), dtype=bool)
    options[3] = False
    options[3, tags.index("B-X")] = True  # the last token may only begin an entity
    assert shortest_conflict(options, *rules) == (3, 3)
    assert shortest_conflict(numpy.ones((4, len(tags)), dtype=bool), *rules) is None


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tag_sets_admit_exactly_the_analyses_that_agree_with_the_facts(scheme: str) -> None:
    labels = ["A", "B"]
    tags = tag_names(labels, scheme)
    length = 4
    valid = [
        [tags[i] for i in ids]
        for ids in itertools.product(range(len(tags)), repeat=length)
        if is_valid([tags[i] for i in ids], scheme)
    ]
    facts = [
        ("entity", (1, 3, "A"), lambda ents, _: (1, 3, "A") in ents),
        ("entity", (3, 4, "B"), lambda ents, _: (3, 4, "B") in ents),
        ("outside", (1, 3), lambda ents, _: all(e <= 1 or s >= 3 for s, e, _ in ents)),
        (
            "inside",
            (2, ["A"]),
            lambda ents, _: any(s <= 2 < e and lab == "A" for s, e, lab in ents),
        ),
        ("inside", (0, None), lambda ents, _: any(s <= 0 < e for s, e, _ in ents)),
        ("begins", (2, ["B"]), lambda ents, _: any(s == 2 and lab == "B" for s, _, lab in ents)),
        ("begins", (1, None), lambda ents, _: any(s == 1 for s, _, _ in ents)),
    ]
    for name, args, holds in facts:
        sets = getattr(TagSets(labels, length, scheme), name)(*args).allowed
        index = {tag: i for i, tag in enumerate(tags)}
        for path in valid:
            agrees = all(sets[t, index[tag]] for t, tag in enumerate(path))
            assert agrees == holds(entities_of(path), path), (name, args, path)


def test_tag_sets_reject_bad_spans_and_labels() -> None:
    sets = TagSets(["A"], 3)
    with pytest.raises(ValueError, match="not a non-empty span"):
        sets.entity(2, 2, "A")
    with pytest.raises(ValueError, match="not a non-empty span"):
        sets.outside(1, 4)
    with pytest.raises(ValueError, match=r"Unknown entity labels \['B'\]"):
        sets.inside(0, ["B"])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cut_sets_decode_each_piece_of_an_entity_across_a_cut(scheme: str) -> None:
    labels = ["A", "B"]
    tags = tag_names(labels, scheme)
    crf = make_crf(scheme, labels, 1)
    sets = TagSets(labels, 7, scheme).entity(1, 6, "B")
    pieces = cut(sets.allowed, [3, 2, 2], tags, scheme)
    assert [len(piece) for piece in pieces] == [3, 2, 2]
    emissions = torch.randn(3, 3, len(tags), dtype=torch.float64)
    mask = torch.arange(3) < torch.tensor([[3], [2], [2]])
    candidates = torch.ones(3, 3, len(tags), dtype=torch.bool)
    for row, piece in enumerate(pieces):
        candidates[row, : len(piece)] = torch.from_numpy(piece)
    paths = CRF.to_lists(crf.decode(emissions, mask, candidates)[0], mask)
    found = [entities_of([tags[i] for i in path]) for path in paths]
    assert (1, 3, "B") in found[0] and found[1] == {(0, 2, "B")} and (0, 1, "B") in found[2]
    free = cut(numpy.ones((7, len(tags)), dtype=bool), [3, 4], tags, scheme)
    assert all(piece.all() for piece in free)
