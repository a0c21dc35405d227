"""The thinc architectures: Docs -> token features -> the PyTorch tagger -> emission scores.

`bilstm_crf.py` registers `spacy-bilstm-crf.BiLSTMCRF.v1` (the tok2vec, cut into segments by
`segments.py`, then the BiLSTM-CRF module behind thinc's wrapper, `torch_wrapper.py`);
`crf_ops.py` holds the operations on its CRF. Token features: `word_char_embed.py`
(`WordCharEmbed.v2`, the default), `word_char_embed_v1.py`, `combine.py` (`ProjectedEmbed.v1`,
`ConcatFeatures.v1`), `char_cnn.py`, `static_vectors.py`.
"""

from .bilstm_crf import build_bilstm_crf
from .combine import build_concat_features, build_projected_embed
from .word_char_embed import build_word_char_embed_v2
from .word_char_embed_v1 import build_word_char_embed

__all__ = [
    "build_bilstm_crf",
    "build_concat_features",
    "build_projected_embed",
    "build_word_char_embed",
    "build_word_char_embed_v2",
]
