"""Training data: `conll.py` (CoNLL NER files to Docs and `.spacy`), `gold.py` (gold tag ids
on the predicted tokens, missing annotation as unknown), `callbacks.py` (config callbacks)."""

from .callbacks import make_check_vectors, make_require
from .conll import conll_to_docs, convert, read_conll

__all__ = ["conll_to_docs", "convert", "make_check_vectors", "make_require", "read_conll"]
