"""Probe code for `spacy train --code`: `probe.CharCNN.v1`, the whole-word character CNN of
`spacy_bilstm_crf/chars.py` as a feature layer, to put next to the default features with
`spacy-bilstm-crf.ConcatFeatures.v1` (see `char_cnn.cfg`)."""

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model
from thinc.types import Floats2d

from spacy_bilstm_crf.chars import build_char_cnn


@registry.architectures("probe.CharCNN.v1")
def char_cnn(
    width: int = 50, char_dim: int = 32, kernel: int = 3, max_bytes: int = 20
) -> Model[list[Doc], list[Floats2d]]:
    return build_char_cnn(width, char_dim, kernel, max_bytes)
