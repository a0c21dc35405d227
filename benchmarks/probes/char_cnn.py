"""Probe: the whole-word character CNN of `spacy_bilstm_crf/chars.py` next to the default
features. As `spacy train --code`, it registers `probe.CharCNN.v1`; run as a script, it writes
the probe's config, `configs/bilstm_crf.cfg` with its features and the CNN side by side
through `spacy-bilstm-crf.ConcatFeatures.v1`:

    python benchmarks/probes/char_cnn.py OUTPUT.cfg
    python -m spacy train OUTPUT.cfg --code benchmarks/probes/char_cnn.py --paths.train ...
"""

import sys
from pathlib import Path

from spacy.tokens import Doc
from spacy.util import load_config, registry
from thinc.api import Model
from thinc.types import Floats2d

from spacy_bilstm_crf.chars import build_char_cnn

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "bilstm_crf.cfg"


@registry.architectures("probe.CharCNN.v1")
def char_cnn(
    width: int = 50, char_dim: int = 32, kernel: int = 3, max_bytes: int = 20
) -> Model[list[Doc], list[Floats2d]]:
    return build_char_cnn(width, char_dim, kernel, max_bytes)


def write_config(output: Path, width: int = 50) -> None:
    """The default config with the CNN's `width` features next to its own."""
    config = load_config(DEFAULT_CONFIG, interpolate=False)
    model = config["components"]["ner"]["model"]
    model["tok2vec"] = {
        "@architectures": "spacy-bilstm-crf.ConcatFeatures.v1",
        "base": dict(model["tok2vec"]),
        "extra": {"@architectures": "probe.CharCNN.v1", "width": width},
    }
    config.to_disk(output)


if __name__ == "__main__":
    write_config(Path(sys.argv[1]))
