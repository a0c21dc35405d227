"""How informative each unit of a text is to annotate, from the tagger's CRF posteriors.

Units: the whole text (`doc`), each sentence (`sentence`), or a region around uncertain
tokens (`span`): a run of tokens that may be part of an entity or whose tag is uncertain,
ended by tokens the model is sure are outside any entity, within one sentence. Strategies
(a higher score is picked first):

- `random`: a random score, the baseline.
- `lc` (least confidence): 1 - P(best analysis of the unit), the unit's analysis marginal
  over the rest of the text (Culotta and McCallum, 2005).
- `mnlp`: minus the log probability of the best analysis over its token count (maximum
  normalized log-probability, Shen et al., 2018): long units are not favoured for being long.
- `entropy`: the mean entropy of the tokens' tag posteriors (Settles and Craven, 2008).

For spans every strategy scores tokens: `lc` and `mnlp` by 1 - the token's highest tag
posterior, `entropy` by its entropy; a region's score is the mean over its tokens, the
expected errors per token a person reviews. `confidence` reverses each score's order into
[0, 1] (the probability of the best analysis, its per-token geometric mean, exp(-entropy)),
for tools that show the least confident first.
"""

import re
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy

STRATEGIES = ("random", "lc", "mnlp", "entropy")
UNITS = ("doc", "sentence", "span")
# A token is in a span region while its posterior of being outside every entity is below
# this, or its own uncertainty reaches SPAN_SEED; a region needs one token of the latter.
SPAN_OUTSIDE = 0.95
SPAN_SEED = 0.1
_DIGITS = re.compile(r"\d")


class Unit(NamedTuple):
    """Tokens `start..end-1` of a text, how informative they are, and the model's confidence
    in them (lower confidence is higher score)."""

    start: int
    end: int
    score: float
    confidence: float


def token_entropy(marginals: numpy.ndarray) -> numpy.ndarray:
    """The entropy, in nats, of each row of tag posteriors `(T, K)`; shape `(T,)`."""
    probs = numpy.clip(marginals.astype("float64"), 1e-12, 1.0)
    return -(marginals * numpy.log(probs)).sum(axis=1)


def token_uncertainty(marginals: numpy.ndarray, strategy: str) -> numpy.ndarray:
    """Per token: its entropy (`entropy`), else 1 - its highest posterior; shape `(T,)`."""
    if strategy == "entropy":
        return token_entropy(marginals)
    return 1.0 - marginals.max(axis=1).astype("float64")


def piece_units(
    pieces: Sequence[tuple[int, int, float]],
    marginals: numpy.ndarray | None,
    strategy: str,
    rng: numpy.random.Generator,
) -> list[Unit]:
    """Units for whole pieces (a doc, or its sentences), each `(start, end, log P(best))`.
    Empty pieces are left out; `marginals` (the tag posteriors) are needed for `entropy`."""
    _check(strategy)
    units = []
    for start, end, log_prob in pieces:
        size = end - start
        if size < 1:
            continue
        log_prob = min(float(log_prob), 0.0)
        if strategy == "entropy":
            if marginals is None:
                raise ValueError("the entropy strategy needs the tag posteriors")
            mean = float(token_entropy(marginals[start:end]).mean())
            units.append(Unit(start, end, mean, float(numpy.exp(-mean))))
        elif strategy == "mnlp":
            units.append(Unit(start, end, -log_prob / size, float(numpy.exp(log_prob / size))))
        else:
            score = float(-numpy.expm1(log_prob)) if strategy == "lc" else float(rng.random())
            units.append(Unit(start, end, score, float(numpy.exp(log_prob))))
    return units


def span_units(
    marginals: numpy.ndarray,
    sentences: Sequence[tuple[int, int]],
    strategy: str,
    rng: numpy.random.Generator,
    reviewed: numpy.ndarray | None = None,
) -> list[Unit]:
    """Regions around uncertain tokens, within each sentence `(start, end)`, leaving out
    tokens already `reviewed` (bool `(T,)`): each a run of tokens that may be part of an
    entity or are uncertain, holding at least one token of uncertainty `SPAN_SEED` or more."""
    _check(strategy)
    uncertain = token_uncertainty(marginals, strategy)
    seed = uncertain >= (SPAN_SEED if strategy != "entropy" else _entropy_level(SPAN_SEED))
    inside = (marginals[:, 0] < SPAN_OUTSIDE) | seed  # shape: (T,), tag 0 is O
    if reviewed is not None:
        inside &= ~reviewed
    units = []
    for first, last in sentences:
        start = first
        while start < last:
            if not inside[start]:
                start += 1
                continue
            end = start
            while end < last and inside[end]:
                end += 1
            if seed[start:end].any():
                mean = float(uncertain[start:end].mean())
                score = float(rng.random()) if strategy == "random" else mean
                confidence = numpy.exp(-mean) if strategy == "entropy" else 1.0 - mean
                units.append(Unit(start, end, score, float(confidence)))
            start = end
    return units


def choose(
    units: Sequence[Unit],
    n: int | None = None,
    tokens: int | None = None,
    keys: Sequence[Hashable] | None = None,
) -> list[int]:
    """Indices of the units to annotate, most informative first: the first `n`, or as many
    as fit in `tokens` tokens (a unit too big for what is left is passed over). With `keys`
    (see `same_text`), a unit whose key an earlier choice has is passed over: a pool repeats
    datelines and table headers, and a person should not label the same text twice. Ties
    keep the given order."""
    if (n is None) == (tokens is None):
        raise ValueError("give exactly one budget: n units or a number of tokens")
    if n is not None and n < 1:
        return []
    order = sorted(range(len(units)), key=lambda i: -units[i].score)
    chosen: list[int] = []
    seen: set[Hashable] = set()
    left = tokens if tokens is not None else 0
    for i in order:
        if keys is not None and keys[i] in seen:
            continue
        size = units[i].end - units[i].start
        if n is None and size > left:
            continue
        chosen.append(i)
        if keys is not None:
            seen.add(keys[i])
        left -= size
        if len(chosen) == n or (n is None and left == 0):
            break
    return chosen


def same_text(text: str) -> str:
    """A key under which texts count as the same for `choose`: case, digits and runs of
    whitespace aside ("PARIS 1996-08-30" and "Paris 1996-08-31")."""
    return " ".join(_DIGITS.sub("0", text.lower()).split())


def _entropy_level(uncertainty: float) -> float:
    """The entropy of a token whose best tag has posterior 1 - `uncertainty` and whose
    runner-up has the rest: the `entropy` strategy's matching threshold."""
    p = 1.0 - uncertainty
    return float(-(p * numpy.log(p) + uncertainty * numpy.log(uncertainty)))


def _check(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
