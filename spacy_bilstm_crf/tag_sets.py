"""Per-token tag sets from what is known about spans: the constraints a CRF decodes under.

A `(T, K)` bool array says which of the `K` tags (in `tags.tag_names` order) each of `T`
tokens may take; the CRF's operations take it, batched, as `candidates`. `TagSets` starts
with every tag allowed and narrows the sets with facts about spans: an entity of a label (its
tags forced under the scheme, and the token after it not continuing it), tokens outside every
entity, a token inside an entity of one of some labels, a token that starts an entity. Facts
that contradict each other leave no allowed path; the CRF then raises an error naming the
tokens. `cut` splits a doc's sets into the sequences the model decodes.

NumPy only, no torch or spaCy: token offsets in, bool arrays out.
"""

from collections.abc import Iterable, Sequence

import numpy

from .tags import OUTSIDE, restart_tags, tag_names


class TagSets:
    """The tags each of `length` tokens may take, over the tags of `labels` in `scheme`.

    `allowed` `(length, K)` starts all true; each method narrows it and returns `self`.
    Offsets are token indices, `end` exclusive.
    """

    def __init__(self, labels: Sequence[str], length: int, scheme: str = "BIO") -> None:
        self.labels = list(labels)
        self.scheme = scheme
        self.tags = tag_names(self.labels, scheme)
        self.allowed = numpy.ones((length, len(self.tags)), dtype=bool)  # shape: (T, K)
        self._index = {tag: i for i, tag in enumerate(self.tags)}

    def entity(self, start: int, end: int, label: str) -> "TagSets":
        """Tokens `start..end-1` are exactly one entity of `label`: B, I..., (BILUO: L, or U
        alone), and the token after it does not continue it."""
        self._check_span(start, end)
        prefixes = ["B"] + ["I"] * (end - start - 1)
        if self.scheme == "BILUO":
            prefixes = ["U"] if end - start == 1 else prefixes[:-1] + ["L"]
        for position, prefix in zip(range(start, end), prefixes):
            self._keep(position, self._ids(prefix, [label]))
        if end < len(self.allowed):
            continuing = self._ids("IL" if self.scheme == "BILUO" else "I", [label])
            self.allowed[end, continuing] = False
        return self

    def outside(self, start: int, end: int) -> "TagSets":
        """Tokens `start..end-1` are outside every entity."""
        self._check_span(start, end)
        for position in range(start, end):
            self._keep(position, [self._index[OUTSIDE]])
        return self

    def inside(self, position: int, labels: Iterable[str] | None = None) -> "TagSets":
        """The token at `position` lies inside an entity of one of `labels` (None: of any)."""
        self._check_span(position, position + 1)
        return self._keep(position, self._ids(self._prefixes(), labels))

    def begins(self, position: int, labels: Iterable[str] | None = None) -> "TagSets":
        """The token at `position` starts an entity of one of `labels` (None: of any)."""
        self._check_span(position, position + 1)
        return self._keep(position, self._ids("BU" if self.scheme == "BILUO" else "B", labels))

    def _keep(self, position: int, ids: list[int]) -> "TagSets":
        keep = numpy.zeros(len(self.tags), dtype=bool)
        keep[ids] = True
        self.allowed[position] &= keep
        return self

    def _ids(self, prefixes: str, labels: Iterable[str] | None) -> list[int]:
        chosen = self.labels if labels is None else list(labels)
        unknown = [label for label in chosen if label not in self.labels]
        if unknown:
            raise ValueError(f"Unknown entity labels {unknown}: the tags are of {self.labels}.")
        return [self._index[f"{p}-{label}"] for label in chosen for p in prefixes]

    def _prefixes(self) -> str:
        return "BILU" if self.scheme == "BILUO" else "BI"

    def _check_span(self, start: int, end: int) -> None:
        if not 0 <= start < end <= len(self.allowed):
            raise ValueError(
                f"Tokens {start}..{end - 1} are not a non-empty span of the {len(self.allowed)} "
                "tokens."
            )


def cut(allowed: numpy.ndarray, lengths: Sequence[int], tags: Sequence[str], scheme: str) -> list:
    """The tag sets `(T_i, K)` of consecutive sequences of `lengths` tokens from one text's
    sets `allowed` `(T, K)`, as a model that cuts the text decodes them.

    A cut may fall inside a known entity; each side then takes the tags the entity's piece
    would have: the first token of a sequence may also take `B-X` where it may take `I-X` (and
    in BILUO `U-X` for `L-X`), the last token `U-X` for `B-X` and `L-X` for `I-X` (BILUO). A
    set stays as it was otherwise, so unconstrained tokens stay unconstrained."""
    first, last = restart_tags(tags, scheme)
    pieces, offset = [], 0
    for length in lengths:
        piece = allowed[offset : offset + length].copy()
        if offset > 0:
            _widen(piece[0], allowed[offset], first)
        if offset + length < len(allowed):
            _widen(piece[-1], allowed[offset + length - 1], last)
        pieces.append(piece)
        offset += length
    return pieces


def _widen(row: numpy.ndarray, original: numpy.ndarray, moves: dict[int, int]) -> None:
    for old, new in moves.items():
        if original[old]:
            row[new] = True
