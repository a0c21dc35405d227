"""spacy-bilstm-crf: a BiLSTM-CRF named-entity tagger for spaCy pipelines.

Importing registers the `bilstm_crf` factory and the architectures; spaCy also finds them
through entry points, so `nlp.add_pipe("bilstm_crf")` needs no import.

How data flows, and where:

    Doc -> ml/ (token features; segments; the thinc wrapper) -> nn/ (BiLSTM -> emission
    scores -> CRF) -> ml/crf_ops.py (decode, probabilities) -> pipeline/ (tags -> doc.ents)

- `tags.py`: tag schemes (BIO, BILUO), tag names and the CRF's allowed moves. No torch.
- `tag_sets.py`: per-token tag sets from known spans, the constraints the CRF decodes under.
- `nn/`: the PyTorch modules, BiLSTM and CRF with its algorithms; nothing of spaCy or thinc.
- `ml/`: thinc architectures: token features and `BiLSTMCRF.v1`, and the CRF operations.
- `pipeline/`: the `bilstm_crf` component, which decodes around entities set before it, and
  `decode_around` (the best analyses under a person's fixes); it never does CRF maths itself.
- `train/`: CoNLL reading, gold tags for training, config callbacks.
- `calibration/`: calibration metrics and temperature fitting.
- `annotate/`: the batch annotator, locally or on Ray.
- `active/`: the annotation loop: choose what to label, tool formats, ingest the answers.
- `cli/`: `python -m spacy_bilstm_crf COMMAND` (convert, annotate, calibrate, select, ingest).
"""

from .ml import (
    build_bilstm_crf,
    build_concat_features,
    build_projected_embed,
    build_word_char_embed,
    build_word_char_embed_v2,
)
from .nn import CRF, BiLSTMTagger, ConstraintError
from .pipeline import BiLSTMCRFTagger, decode_around, make_bilstm_crf
from .tag_sets import TagSets
from .tags import Constraints, allowed_transitions, tag_names
from .train import make_check_vectors, make_require

__all__ = [
    "CRF",
    "BiLSTMCRFTagger",
    "BiLSTMTagger",
    "ConstraintError",
    "Constraints",
    "TagSets",
    "allowed_transitions",
    "build_bilstm_crf",
    "build_concat_features",
    "build_projected_embed",
    "build_word_char_embed",
    "build_word_char_embed_v2",
    "decode_around",
    "make_check_vectors",
    "make_require",
    "make_bilstm_crf",
    "tag_names",
]
