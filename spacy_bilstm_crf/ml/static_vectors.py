"""Static word vectors for the features: looked up by ORTH, then LOWER, and optional.

`word_vectors` finds the rows of distinct words: by the token's text (ORTH) and, when the
table has no row for it, by its lowercase form (LOWER). A lowercased table such as GloVe then
serves capitalised words too, after saving and loading (spaCy 3.8 does not save a table's
`attr`), and a cased table such as en_core_web_lg keeps its own rows for "Apple" and
"apple". Words with neither get zeros.
"""

from typing import Any

import numpy
from spacy.tokens import Doc
from spacy.vectors import Mode


def word_vectors(
    vectors: Any, words: numpy.ndarray, lowers: numpy.ndarray, width: int
) -> numpy.ndarray:
    """`(U, width)` float32 rows of the vocab's vectors for distinct ORTH keys `words`, by ORTH
    or else by the matching LOWER key; zeros for words with neither. Floret tables have a
    vector for every word."""
    if vectors.shape[1] != width:
        raise ValueError(
            f"The model was trained with {width}-wide static vectors, but the vocab's table "
            f"is {vectors.shape[1]} wide: load the pipeline with the vectors it was trained on."
        )
    if vectors.mode == Mode.floret:
        return numpy.asarray(vectors.get_batch(words), dtype="float32")
    key2row = vectors.key2row
    rows = numpy.fromiter(
        (key2row.get(int(w), key2row.get(int(lo), -1)) for w, lo in zip(words, lowers)),
        dtype="int64",
        count=len(words),
    )
    out = numpy.asarray(vectors.data)[rows.clip(min=0)].astype("float32")
    out[rows < 0] = 0.0
    return out


def table_width(docs: list[Doc] | None) -> int:
    """Width of the docs' vocab vectors, 0 when the table is empty."""
    if not docs or not docs[0].vocab.vectors.shape[0]:
        return 0
    return docs[0].vocab.vectors.shape[1]


def require_width(wanted: bool | None, width: int) -> int:
    """The vectors width to use: `width`, or 0 when `wanted` is false; an error when vectors
    are required (`wanted` true) but the vocab has none."""
    if wanted and not width:
        raise ValueError(
            "include_static_vectors is true, but the vocab has no vectors. Set [paths] vectors "
            "(a pipeline or vectors folder, e.g. from the project's `vectors` step or "
            "`spacy init vectors`), or set include_static_vectors = null or false."
        )
    return width if wanted is not False else 0
