"""How docs are cut into the sequences the BiLSTM and the CRF see.

Short docs are one sequence each. A doc longer than `max_length` tokens is cut at sentence
starts (when it has them), packing whole sentences up to `max_length`; a sentence or a
sentence-less stretch longer than that is cut into windows. This bounds memory for any input
and keeps entities, which do not cross sentences, inside one sequence.
"""

from collections.abc import Iterable

from spacy.tokens import Doc


def segment_lengths(doc: Doc, max_length: int) -> list[int]:
    """Lengths of the consecutive segments of `doc`: positive, summing to `len(doc)`."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}.")
    if len(doc) <= max_length:
        return [len(doc)] if len(doc) else []
    if doc.has_annotation("SENT_START"):
        pieces: Iterable[int] = (len(sent) for sent in doc.sents)
    else:
        pieces = [len(doc)]
    lengths: list[int] = []
    current = 0
    for piece in pieces:
        if current and current + piece > max_length:
            lengths.append(current)
            current = 0
        while piece > max_length:
            if current:
                lengths.append(current)
                current = 0
            lengths.append(max_length)
            piece -= max_length
        current += piece
    if current:
        lengths.append(current)
    return lengths


def split_by(items: list, lengths: list[int]) -> list[list]:
    """Consecutive slices of `items` with the given lengths."""
    out, start = [], 0
    for length in lengths:
        out.append(items[start : start + length])
        start += length
    return out
