"""Gold tag ids for the tagger, from spaCy Examples.

The tag ids follow `tags.tag_names`: `O` is 0, then the scheme's prefixes ("BI" or "BILU")
for each label in order. A token whose annotation is missing gets -1 (trained as unknown).
When the predicted and reference docs have the same words (the usual case in `spacy train`,
where the predicted doc is the reference text tokenized again), the tags are read from the
reference's entity arrays directly; otherwise spaCy's alignment does it
(`Example.get_aligned_ner`). Both give the same tags.
"""

from collections.abc import Sequence

import numpy
from spacy.attrs import ENT_IOB, ENT_TYPE, IS_SPACE, ORTH
from spacy.training import Example
from spacy.training.iob_utils import biluo_to_iob

from ..tags import restart_tags, split_tag

# ENT_IOB values in spaCy: 0 missing, 1 inside, 2 outside, 3 begin.
_MISSING, _INSIDE, _OUTSIDE, _BEGIN = 0, 1, 2, 3


class UnknownLabelError(ValueError):
    """A gold entity label that is not one of the component's labels."""

    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__(label)


def gold_tag_ids(example: Example, labels: Sequence[str], scheme: str) -> numpy.ndarray:
    """Tag ids `(len(example.predicted),)` of the example's entities, -1 where unknown."""
    predicted, reference = example.predicted, example.reference
    same_words = len(predicted) == len(reference) and numpy.array_equal(
        predicted.to_array(ORTH), reference.to_array(ORTH)
    )
    if not same_words:
        return _aligned_tag_ids(example, labels, scheme)
    if not reference.has_annotation("ENT_IOB"):
        return numpy.full(len(predicted), -1, dtype="int32")
    iob = reference.to_array(ENT_IOB).astype("int64")
    types = reference.to_array(ENT_TYPE)  # uint64 hashes: half of them overflow an int64
    strings = reference.vocab.strings
    index = {strings.as_int(label): i for i, label in enumerate(labels) if label in strings}
    in_entity = (iob == _BEGIN) | (iob == _INSIDE)
    kinds, kind_index = numpy.unique(types, return_inverse=True)
    known = numpy.array([index.get(int(kind), -2) for kind in kinds])[kind_index.ravel()]
    label_ids = numpy.where(in_entity, known, 0)
    if (label_ids == -2).any():
        raise UnknownLabelError(strings[int(types[numpy.argmax(label_ids == -2)])])
    starts = iob == _BEGIN
    continues = numpy.append(iob[1:] == _INSIDE, False)  # the next token is inside this entity
    ids = numpy.where(iob == _OUTSIDE, 0, -1)
    is_space = predicted.to_array(IS_SPACE).astype(bool)
    ids[(iob == _MISSING) & is_space] = 0
    if scheme == "BIO":
        prefix = numpy.where(starts, 0, 1)  # B, I
        width = 2
    else:
        # BILU: B starts and continues, I continues, L ends an entity of 2+, U is alone.
        prefix = numpy.select(
            [starts & continues, ~starts & continues, ~starts & ~continues], [0, 1, 2], 3
        )
        width = 4
    entity_ids = 1 + label_ids * width + prefix
    return numpy.where(in_entity, entity_ids, ids).astype("int32")


def restart_segments(
    ids: Sequence[int], lengths: Sequence[int], tags: Sequence[str], scheme: str
) -> list[list[int]]:
    """Tag ids cut into the segments of `lengths`, as the model cuts the doc: an entity cut
    by a segment boundary restarts there, as it does in prediction."""
    first, last = restart_tags(tags, scheme)
    pieces, start = [], 0
    for length in lengths:
        piece = list(ids[start : start + length])
        start += length
        piece[0] = first.get(piece[0], piece[0])
        piece[-1] = last.get(piece[-1], piece[-1])
        pieces.append(piece)
    return pieces


def _aligned_tag_ids(example: Example, labels: Sequence[str], scheme: str) -> numpy.ndarray:
    """The same through spaCy's alignment, for examples whose tokenizations differ."""
    prefixes = "BI" if scheme == "BIO" else "BILU"
    index = {label: i for i, label in enumerate(labels)}
    tags = example.get_aligned_ner()
    if scheme == "BIO":
        tags = biluo_to_iob(tags)
    ids = []
    for tag in tags:
        if tag is None or tag == "-":
            ids.append(-1)
        elif tag == "O":
            ids.append(0)
        else:
            prefix, label = split_tag(tag)
            if label not in index:
                raise UnknownLabelError(label)
            ids.append(1 + index[label] * len(prefixes) + prefixes.index(prefix))
    return numpy.asarray(ids, dtype="int32")
