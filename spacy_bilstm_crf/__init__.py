"""spacy-bilstm-crf: a BiLSTM-CRF named-entity tagger for spaCy pipelines.

Importing registers the `bilstm_crf` factory and the architectures; spaCy also finds them
through entry points, so `nlp.add_pipe("bilstm_crf")` needs no import.
"""

from .bilstm import BiLSTMTagger
from .callbacks import make_check_vectors, make_require
from .crf import CRF
from .features import build_projected_embed, build_word_char_embed
from .model import build_bilstm_crf
from .pipe import BiLSTMCRFTagger, make_bilstm_crf
from .tags import Constraints, allowed_transitions, tag_names
from .token_features import build_word_char_embed_v2

__all__ = [
    "CRF",
    "BiLSTMCRFTagger",
    "BiLSTMTagger",
    "Constraints",
    "allowed_transitions",
    "build_bilstm_crf",
    "build_projected_embed",
    "build_word_char_embed",
    "build_word_char_embed_v2",
    "make_check_vectors",
    "make_require",
    "make_bilstm_crf",
    "tag_names",
]
