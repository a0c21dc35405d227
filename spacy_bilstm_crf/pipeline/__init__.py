"""The `bilstm_crf` component: `bilstm_crf.py` (factory and `TrainablePipe`), `analyses.py`
(entity probabilities and k-best analyses from the emission scores), `spans.py` (entities
from tag ids, written to `doc.ents`), `presets.py` (decoding around what earlier components
set), `interactive.py` (`decode_around`: the best analyses under a person's fixes),
`known_entities.py` (hashed training entities), `settings.py` (the default model and the
checks on the options)."""

from .bilstm_crf import BiLSTMCRFTagger, make_bilstm_crf
from .interactive import Entity, Interaction, Labelling, decode_around

__all__ = [
    "BiLSTMCRFTagger",
    "Entity",
    "Interaction",
    "Labelling",
    "decode_around",
    "make_bilstm_crf",
]
