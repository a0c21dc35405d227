"""The simulated person of `benchmarks/scripts/correction_propagation.py`: which error comes
first, what each fix costs, and the constraints a session hands to the decoder."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "scripts"))
from correction_propagation import Session, cost, first_error, static_actions  # noqa: E402


@pytest.mark.parametrize(
    ("pred", "gold", "actions"),
    [
        ({(0, 2, "PER")}, {(0, 2, "PER")}, 0),
        ({(0, 2, "PER")}, {(1, 2, "PER")}, 1),  # move a boundary
        ({(0, 2, "PER")}, {(0, 2, "LOC")}, 1),  # relabel
        ({(0, 3, "ORG")}, {(1, 2, "LOC")}, 2),  # both
        ({(4, 5, "LOC")}, set(), 1),  # remove
        (set(), {(4, 5, "LOC")}, 1),  # add
        ({(0, 4, "ORG")}, {(0, 2, "ORG"), (2, 4, "ORG")}, 2),  # split: move, then add
        ({(0, 1, "PER"), (1, 2, "PER")}, {(0, 2, "PER")}, 2),  # join: move, then remove
    ],
)
def test_static_actions_count_entity_level_fixes(pred, gold, actions) -> None:
    assert static_actions(pred, gold) == actions


def test_the_first_error_in_reading_order_pairs_overlapping_entities() -> None:
    pred = {(5, 6, "LOC"), (0, 3, "ORG")}
    gold = {(1, 3, "ORG"), (5, 6, "LOC"), (8, 9, "PER")}
    assert first_error(pred, gold) == (0, (0, 3, "ORG"), (1, 3, "ORG"))
    fixed = (pred - {(0, 3, "ORG")}) | {(1, 3, "ORG")}
    assert first_error(fixed, gold) == (8, None, (8, 9, "PER"))
    assert first_error(gold, gold) is None
    assert cost(None, (8, 9, "PER")) == cost((8, 9, "PER"), None) == 1


def test_a_session_fixes_reads_and_checks_its_clicks() -> None:
    gold = {(1, 3, "PER"), (5, 6, "LOC")}
    session = Session(gold, 7)
    assert session.act({(0, 3, "PER")}, clicks=True) is None  # move the start: token 0 freed
    assert session.fixes == [("read", 0), ("entity", (1, 3, "PER")), ("outside", (0, 1))]
    assert session.act({(1, 3, "PER")}, clicks=True) is None  # add LOC by a click
    assert session.fixes[-2:] == [("read", 5), ("click", (5, "LOC"))]
    assert session.read_up_to() == 5
    assert session.act({(1, 3, "PER"), (5, 7, "LOC")}, clicks=True) == (False, True)
    assert session.fixes[-2:] == [("entity", (5, 6, "LOC")), ("outside", (6, 7))]
    assert session.actions == 3
    assert session.act(gold, clicks=True) is None and session.done
