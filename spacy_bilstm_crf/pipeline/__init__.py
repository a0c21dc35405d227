"""The `bilstm_crf` component: `bilstm_crf.py` (factory and `TrainablePipe`), `analyses.py`
(entity probabilities and k-best analyses from the emission scores), `spans.py` (entities
from tag ids, written to `doc.ents`), `known_entities.py` (hashed training entities),
`settings.py` (the default model and the checks on the options)."""

from .bilstm_crf import BiLSTMCRFTagger, make_bilstm_crf

__all__ = ["BiLSTMCRFTagger", "make_bilstm_crf"]
