"""Checks that say when a temperature fit may mean little: dev data whose labels share none
with the component's, too few entities, or a temperature at a bound of the search."""

import math
from collections.abc import Iterable

from spacy.training import Example

from ..pipeline.bilstm_crf import BiLSTMCRFTagger
from .metrics import Outcomes
from .temperature import AT_BOUND, FEW_ENTITIES, TEMPERATURE_BOUNDS


def data_warnings(
    pipe: BiLSTMCRFTagger, examples: Iterable[Example], outcomes: Outcomes, name: str
) -> list[str]:
    """Why a fit on `examples` (the data set `name`) may mean little: gold entity labels that
    share none with the component's (every entity then counts as wrong), or fewer than
    `FEW_ENTITIES` predicted entities in `outcomes`."""
    warnings = []
    gold = sorted({ent.label_ for eg in examples for ent in eg.reference.ents})
    if gold and not set(gold) & set(pipe.labels):
        warnings.append(
            f"the entity labels of {name} ({', '.join(gold)}) share none with the "
            f"component's ({', '.join(pipe.labels)}): every entity counts as wrong, so the "
            "fit is meaningless"
        )
    if len(outcomes.probs) < FEW_ENTITIES:
        warnings.append(
            f"only {len(outcomes.probs):,} predicted entities to fit on (fewer than "
            f"{FEW_ENTITIES}): the temperature is a rough estimate"
        )
    return warnings


def bound_warnings(
    pipe: BiLSTMCRFTagger, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> list[str]:
    """The component's fitted temperatures that lie at a bound of the search (within
    `AT_BOUND` in log space): the best one may lie beyond it."""
    named = [
        ("the temperature", pipe.cfg["temperature"]),
        ("the temperature for training entities", pipe.cfg.get("seen_temperature")),
        ("the temperature for new entities", pipe.cfg.get("unseen_temperature")),
    ]
    warnings = []
    for what, temperature in named:
        if temperature is None:
            continue
        for bound in bounds:
            if abs(math.log(temperature / bound)) <= AT_BOUND:
                warnings.append(
                    f"{what}, {temperature:.3f}, is at a bound of its search ({bounds[0]:g} "
                    f"to {bounds[1]:g}): the best one may lie beyond it"
                )
    return warnings
