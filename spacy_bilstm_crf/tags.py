"""Tag schemes for entity tagging: tag names from labels and the transitions each scheme allows.

Pure Python (no torch, no spaCy), so the constraints can be read, tested and reused anywhere.
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple

OUTSIDE = "O"
SCHEMES = ("BIO", "BILUO")


class Constraints(NamedTuple):
    """Which moves a linear-chain CRF may make over `K` tags.

    `transitions[i][j]` says whether tag `j` may follow tag `i`; `start[j]` whether a
    sequence may begin with `j`; `end[i]` whether it may end with `i`.
    """

    transitions: list[list[bool]]
    start: list[bool]
    end: list[bool]


def tag_names(labels: Iterable[str], scheme: str = "BIO") -> list[str]:
    """Tag names for `labels`: `O` first, then the scheme's prefixes for each label in order."""
    prefixes = _prefixes(scheme)
    names = [OUTSIDE]
    for label in labels:
        if not label or label != label.strip():
            raise ValueError(f"Entity label {label!r} is empty or has surrounding whitespace.")
        names.extend(f"{prefix}-{label}" for prefix in prefixes)
    return names


def split_tag(tag: str) -> tuple:
    """Split `B-PER` into `("B", "PER")`; `O` becomes `("O", "")`."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, label = tag.partition("-")
    if not sep or not label or len(prefix) != 1:
        raise ValueError(f"Tag {tag!r} is neither 'O' nor of the form 'B-LABEL'.")
    return prefix, label


def allowed_transitions(tags: Sequence[str], scheme: str = "BIO") -> Constraints:
    """The constraints of `scheme` over `tags` (names as made by `tag_names`).

    BIO: `I-X` only after `B-X` or `I-X`, and never first. BILUO: `I-X`/`L-X` only after
    `B-X`/`I-X`; `B-X`/`I-X` only before `I-X`/`L-X`; sequences start and end outside an entity.
    """
    parsed = [split_tag(tag) for tag in tags]
    known = set(_prefixes(scheme)) | {OUTSIDE}
    for tag, (prefix, _) in zip(tags, parsed):
        if prefix not in known:
            raise ValueError(f"Tag {tag!r} does not belong to the {scheme} scheme.")
    if scheme == "BIO":
        move, start, end = _bio_move, _bio_start, lambda prefix: True
    else:
        move, start, end = _biluo_move, _biluo_start, _biluo_end
    return Constraints(
        transitions=[[move(a, b) for b in parsed] for a in parsed],
        start=[start(prefix) for prefix, _ in parsed],
        end=[end(prefix) for prefix, _ in parsed],
    )


def is_valid(tags: Sequence[str], scheme: str = "BIO") -> bool:
    """Whether a tag sequence obeys `scheme` (empty sequences are valid)."""
    if not tags:
        return True
    constraints = allowed_transitions(sorted(set(tags)), scheme)
    index = {tag: i for i, tag in enumerate(sorted(set(tags)))}
    ids = [index[tag] for tag in tags]
    return (
        constraints.start[ids[0]]
        and constraints.end[ids[-1]]
        and all(constraints.transitions[a][b] for a, b in zip(ids, ids[1:]))
    )


def _prefixes(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown tag scheme {scheme!r}; expected one of {SCHEMES}.")
    return "BI" if scheme == "BIO" else "BILU"


def _bio_move(a: tuple, b: tuple) -> bool:
    return b[0] != "I" or (a[0] in "BI" and a[1] == b[1])


def _bio_start(prefix: str) -> bool:
    return prefix != "I"


def _biluo_move(a: tuple, b: tuple) -> bool:
    inside_next = b[0] in "IL"
    open_before = a[0] in "BI"
    return inside_next == open_before and (not inside_next or a[1] == b[1])


def _biluo_start(prefix: str) -> bool:
    return prefix in ("O", "B", "U")


def _biluo_end(prefix: str) -> bool:
    return prefix in ("O", "L", "U")


def restart_tags(tags: Sequence[str], scheme: str = "BIO") -> tuple:
    """Where a sequence is cut inside an entity, the tags each side must take instead.

    Returns two dicts of tag index -> tag index: for the first tag of a piece (`I-X` -> `B-X`,
    and in BILUO `L-X` -> `U-X`) and for the last (BILUO only: `B-X` -> `U-X`, `I-X` -> `L-X`).
    """
    index = {tag: i for i, tag in enumerate(tags)}
    first, last = {}, {}
    for tag, i in index.items():
        prefix, label = split_tag(tag)
        if prefix == "I":
            first[i] = index[f"B-{label}"]
        if scheme == "BILUO" and prefix == "L":
            first[i] = index[f"U-{label}"]
        if scheme == "BILUO" and prefix in ("B", "I"):
            last[i] = index[f"{'U' if prefix == 'B' else 'L'}-{label}"]
    return first, last
