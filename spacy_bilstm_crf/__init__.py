"""spacy-bilstm-crf: a BiLSTM-CRF named-entity tagger for spaCy pipelines."""

from .crf import CRF
from .tags import Constraints, allowed_transitions, tag_names

__all__ = ["CRF", "Constraints", "allowed_transitions", "tag_names"]
