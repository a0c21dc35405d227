"""Random gold presets for training a tagger that reads them (`BiLSTMCRF.v2`).

A doc is shown presets with probability `docs_share`; it then shows, with one rate drawn for
the doc uniformly from [0, `max_rate`], each of its complete known entities (else, at the same
rate, one of its tokens as a click: inside an entity of its label) and each of its known
outside tokens; and with probability `prefix_share` all it knows before a random token, as a
person who corrects a text in reading order has checked it. Docs without presets, and few
presets, are common, so that the model learns to use them and still tags well without; the
kinds are those the component and `decode_around` hand the model (entities, outside tokens,
clicks, a checked stretch). Only known annotation is shown: never a token whose gold tag is
missing (-1), nor an entity whose extent is not known (a token of it missing; in BIO also a
missing token right after it, which might continue it).

NumPy only: gold tag ids in (`gold.gold_tag_ids`), tag sets out (`tag_sets.TagSets`).
"""

from collections.abc import Sequence
from typing import Any

import numpy

from ..tag_sets import TagSets


def known_entities(ids: Sequence[int], scheme: str) -> list[tuple[int, int, int]]:
    """The entities `(start, end, label index)` whose extent the gold tag ids know: tags
    follow `tags.tag_names` (0 is `O`, then the scheme's prefixes for each label), -1 is
    missing."""
    ids = [int(i) for i in ids]
    width = 2 if scheme == "BIO" else 4
    found, position = [], 0
    while position < len(ids):
        tag = ids[position]
        label, prefix = divmod(tag - 1, width)
        if tag <= 0 or prefix not in (0, 3):  # O, missing, or an I or L without its B
            position += 1
            continue
        if prefix == 3:  # U: an entity of one token
            found.append((position, position + 1, label))
            position += 1
            continue
        end = position + 1
        while end < len(ids) and ids[end] == tag + 1:  # I of the same label
            end += 1
        if scheme == "BILUO":
            if end < len(ids) and ids[end] == tag + 2:  # L closes it
                found.append((position, end + 1, label))
                end += 1
        elif end == len(ids) or ids[end] >= 0:  # the next token is known not to continue it
            found.append((position, end, label))
        position = end
    return found


def random_presets(
    ids: Sequence[int],
    labels: Sequence[str],
    scheme: str,
    docs_share: float,
    max_rate: float,
    random: Any = numpy.random,
    prefix_share: float = 0.5,
) -> numpy.ndarray | None:
    """The tag sets `(T, K)` of a random part of a doc's known gold annotation (`ids`, -1
    where missing), or None when the doc shows none. `random`: numpy's global generator
    (seeded by spaCy's training seed) or a `numpy.random.Generator`."""
    ids = numpy.asarray(ids, dtype="int64")
    if not len(ids) or random.random() >= docs_share:
        return None
    rate = random.uniform(0.0, max_rate)
    read = int(random.random() * (len(ids) + 1)) if random.random() < prefix_share else 0
    sets = TagSets(labels, len(ids), scheme)
    entities = known_entities(ids, scheme)
    draws = random.random((len(entities), 2)) < rate  # shape: (E, 2): fixed, clicked
    for (start, end, label), (fixed, clicked) in zip(entities, draws):
        if fixed or end <= read:
            sets.entity(start, end, labels[label])
        elif clicked:
            sets.inside(start + int(random.random() * (end - start)), [labels[label]])
    outside = numpy.flatnonzero(ids == 0)
    shown = (random.random(len(outside)) < rate) | (outside < read)
    for position in outside[shown]:
        sets.outside(int(position), int(position) + 1)
    return sets.allowed
