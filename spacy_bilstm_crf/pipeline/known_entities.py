"""Which predicted entities the tagger saw among its training entities.

A name the model was trained on is right far more often than a new one (CoNLL-2003 test:
0.95 against 0.82), and held-out data differ in how many new names they hold (31% of the
dev entities, 44% of the test ones), so one temperature fitted on dev is too sharp on test.
Calibration fits one temperature per group (see `calibration.py`); this module says which
group an entity is in. The component keeps 53-bit hashes of the lowercase texts of its
training entities, not the texts: a packaged pipeline does not list its training names.
"""

from collections.abc import Iterable

import numpy
from spacy.strings import hash_string
from spacy.training import Example

# Hashes are cut to 53 bits, so that the component's JSON config holds them exactly.
_MASK = (1 << 53) - 1


def entity_key(text: str) -> int:
    """The key of an entity text: its lowercase words, one space between them, hashed."""
    return hash_string(" ".join(text.lower().split())) & _MASK


def training_keys(examples: Iterable[Example]) -> list[int]:
    """The sorted distinct keys of the gold entities of `examples`."""
    return sorted({entity_key(ent.text) for eg in examples for ent in eg.reference.ents})


def are_known(texts: Iterable[str], keys: list[int]) -> numpy.ndarray:
    """Per text, whether its key is among `keys` (sorted), shape `(E,)` bool."""
    found = numpy.fromiter((entity_key(text) for text in texts), dtype="int64")
    return numpy.isin(found, numpy.asarray(keys, dtype="int64"))
