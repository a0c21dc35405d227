"""The arithmetic behind the annotation loop's tables, on small inputs worked out by hand:
means over seeds, when a curve reaches a line and stays there, where labels stop, F1 at equal
tokens shown, and the area under the curve."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "active_learning_report.py"
)
_spec = importlib.util.spec_from_file_location("active_learning_report", SCRIPT)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def record(share: float, f1: float, shown: int, tasks: int, sentences: int = 1) -> dict:
    """A round's result as `active_learning.py` writes it, on a pool of 1,000 tokens."""
    return {
        "share": share,
        "test_f1": f1,
        "sentences": sentences,
        "tasks": tasks,
        "shown_tokens": shown,
        "pool_tokens": 1000,
    }


def points(*rows: tuple[float, float, float]) -> list:
    """Points from `(share reviewed, F1 %, share shown)`."""
    return [report.Point(share, f1, 0.0, 0, shown, 0) for share, f1, shown in rows]


def test_curve_averages_the_seeds_round_by_round() -> None:
    seeds = [
        [record(0.1, 0.80, 200, 10), record(0.2, 0.90, 400, 30, 5)],
        [record(0.1, 0.70, 100, 20), record(0.2, 0.86, 300, 50, 7)],
        [record(0.1, 0.75, 300, 30)],  # a seed with one round: only round 0 is averaged
    ]
    (only,) = report.curve(seeds)
    assert only.share == pytest.approx(0.1) and only.f1 == pytest.approx(75.0)
    assert only.sd == pytest.approx(5.0)  # sample sd of 80, 70, 75
    assert only.shown == pytest.approx(0.2) and only.tasks == pytest.approx(20)
    first, second = report.curve(seeds[:2])
    assert second.f1 == pytest.approx(88.0) and second.sd == pytest.approx(2 * 2**0.5)
    assert second.sentences == 6 and second.shown == pytest.approx(0.35) and second.tasks == 40


def test_a_line_is_reached_where_the_curve_stays_above_it() -> None:
    curve = points((0.1, 80, 0.2), (0.2, 90, 0.4), (0.3, 85, 0.6), (0.4, 91, 0.8), (0.5, 92, 1))
    assert report.reached_at(curve, 90).share == 0.4  # touched at 20%, fell back at 30%
    assert report.reached_at(curve, 80).share == 0.1
    assert report.reached_at(curve, 93) is None
    assert report.tokens_to_reach(curve, 90, 1000) == "400 (40.0%; shown 80.0%)"
    assert report.tokens_to_reach(curve, 95, 1000) == "not reached"
    ending_below = points((0.1, 91, 0.1), (0.2, 89, 0.2))
    assert report.reached_at(ending_below, 90) is None


def test_where_a_strategy_stops_adding_labels() -> None:
    growing = points((0.02, 70, 0.1), (0.04, 75, 0.2), (0.06, 80, 0.3))
    assert report.stopped_at(growing) is None
    flat = points((0.02, 70, 0.1), (0.04, 75, 0.2), (0.049, 80, 0.3), (0.05, 81, 0.3))
    assert report.stopped_at(flat).share == 0.04  # +0.9% is under half of the first +2%
    slowing = points((0.02, 70, 0.1), (0.04, 75, 0.2), (0.055, 80, 0.3), (0.056, 81, 0.3))
    assert report.stopped_at(slowing).share == 0.055


def test_f1_at_equal_tokens_shown_is_read_between_rounds() -> None:
    curve = points((0.1, 80, 0.1), (0.2, 90, 0.3), (0.3, 91, 0.5))
    assert report.f1_at_shown(curve, 0.2) == pytest.approx(85.0)
    assert report.f1_at_shown(curve, 0.4) == pytest.approx(90.5)
    assert report.f1_at_shown(curve, 0.1) == pytest.approx(80.0)
    assert report.f1_at_shown(curve, 0.5) == pytest.approx(91.0)
    assert report.f1_at_shown(curve, 0.05) is None and report.f1_at_shown(curve, 0.6) is None


def test_area_under_the_curve_over_the_full_data_line() -> None:
    # 0-10%: the first round's 50 (5.0); 10-20%: (50 + 100) / 2 over 10% (7.5); 20-30%: the
    # last F1 kept (10.0); over 100 x 30% (30.0): 22.5 / 30.
    curve = points((0.1, 50, 0.1), (0.2, 100, 0.2))
    assert report.area(curve, 100.0, 0.3) == pytest.approx(0.75)
    assert report.area(points((0.1, 100, 0.1)), 100.0, 0.1) == pytest.approx(1.0)


def test_table_names_the_full_line_the_equal_shown_comparison_and_the_stop() -> None:
    full = [[{**record(1.0, 0.90, 1000, 1), "tokens": 1000, "steps": 600}]]
    spans = [
        [record(0.05, 0.88, 300, 40), record(0.06, 0.91, 400, 50), record(0.06, 0.91, 400, 50)]
    ]
    sentences = [
        [record(0.05, 0.80, 50, 5), record(0.10, 0.89, 100, 10), record(0.3, 0.9, 300, 30)]
    ]
    lines = report.table({"full": full, "span": spans, "sentence": sentences}, "T")
    text = "\n".join(lines)
    assert "**90.00 ± 0.00**" in text
    span_row = next(line for line in lines if line.startswith("| spans by uncertainty"))
    assert "60 (6.0%; shown 40.0%)" in span_row and "at 6.0% reviewed" in span_row
    shown_rows = [line for line in lines if "% shown |" in line or line.startswith("| sentences")]
    assert any("30% shown" in line for line in shown_rows)
    sentence_row = [line for line in lines if line.startswith("| sentences by")][1]
    # 5%, 10%, 20% (between 89 at 10% and 90 at 30%) and 30% shown
    assert sentence_row.split(" | ")[1:] == ["80.00", "89.00", "89.50", "90.00 |"]


def test_read_runs_keeps_only_the_seeds_asked_for(tmp_path: Path) -> None:
    """A seed still running (fewer rounds) must not cut the finished seeds' curves."""
    for name, rounds in (("random-0", 3), ("random-1", 1), ("full-0", 1)):
        (tmp_path / name).mkdir()
        lines = [
            json.dumps({"strategy": name.split("-")[0], **record(0.1 * (i + 1), 0.8, 100, 1)})
            for i in range(rounds)
        ]
        (tmp_path / name / "results.jsonl").write_text("\n".join(lines) + "\n")
    every = report.read_runs(tmp_path)
    assert [len(seed) for seed in every["random"]] == [3, 1]
    assert len(report.curve(every["random"])) == 1
    chosen = report.read_runs(tmp_path, [0])
    assert [len(seed) for seed in chosen["random"]] == [3] and len(chosen["full"]) == 1
    assert len(report.curve(chosen["random"])) == 3
