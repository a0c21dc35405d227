"""What a tool's export says a person answered: checked answers, and tasks left out with why.

A broken file (not JSON, a record that is not an object, offsets that are not numbers) is a
`FormatError`: nothing can be trusted. A person's slip on one task (regions that overlap, a
region with two labels) is a `Slip`: that task is skipped with the reason, the rest of the
round goes in.
"""

from dataclasses import dataclass
from typing import Any


class FormatError(ValueError):
    """An answer file that cannot be read; the message names the line or task."""


class Slip(ValueError):
    """One task's answer that cannot be used as it is; the message says why."""


@dataclass
class Answer:
    """A reviewed task: the text, the region the person reviewed, the entities they set
    (character offsets, end exclusive) and where it came from in the file."""

    text: str
    review: tuple[int, int]
    entities: list[tuple[int, int, str]]
    where: str
    source: Any = None
    offset: int = 0


@dataclass
class Skipped:
    """A task left out: `reason` is what the summary counts (`cancelled`, `not annotated`,
    ...), `detail` what went wrong with this one, when there is more to say."""

    where: str
    reason: str
    detail: str = ""


def offsets(start: Any, end: Any, label: Any, text: str, where: str) -> tuple[int, int, str]:
    """A checked entity: whole-number offsets inside the text, start < end, a label."""
    numbers = isinstance(start, int) and isinstance(end, int)
    if not numbers or isinstance(start, bool) or isinstance(end, bool):
        raise FormatError(f"{where}: entity offsets must be whole numbers, got {start!r}, {end!r}")
    if not 0 <= start < end <= len(text):
        raise FormatError(
            f"{where}: entity {start}-{end} is not inside the text ({len(text)} characters)"
        )
    if not isinstance(label, str) or not label.strip():
        raise Slip(f"entity {start}-{end} has no label (got {label!r})")
    return start, end, label


def review_region(meta: dict[str, Any], text: str, where: str) -> tuple[int, int]:
    """The reviewed region from the task's fields (all the text when they are absent)."""
    start, end = meta.get("review_start", 0), meta.get("review_end", len(text))
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
        raise FormatError(f"{where}: review_start/review_end {start!r}/{end!r} do not fit the text")
    return start, end


def checked_answer(
    text: str,
    review: tuple[int, int],
    entities: list[tuple[int, int, str]],
    where: str,
    meta: dict[str, Any],
) -> Answer:
    """An answer whose entities do not overlap one another (a `Slip` if they do)."""
    ordered = sorted(entities)
    for (_, end, _), (start, _, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise Slip(f"entities overlap at characters {start}-{end}")
    return Answer(text, review, ordered, where, meta.get("source"), meta.get("offset", 0))
