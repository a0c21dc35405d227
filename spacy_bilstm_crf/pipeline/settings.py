"""The component's settings: the default model, the checks on the options, and which saved
settings describe the trained model rather than how it runs."""

from thinc.api import Config

from ..tags import SCHEMES

# What the component does with entities and blocked tokens set before it (`presets.py`).
PRESET_MODES = ("fixed", "keep")

default_model_config = """
[model]
@architectures = "spacy-bilstm-crf.BiLSTMCRF.v1"
hidden_width = 256
depth = 1
dropout = 0.25
max_length = 512

[model.tok2vec]
@architectures = "spacy-bilstm-crf.WordCharEmbed.v2"
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
rows = [5000, 1000, 2500, 2500]
widths = [64, 16, 16, 16]
char_width = 16
char_count = 8
include_static_vectors = null
vectors_width = 0
word_dropout = 0.25
"""
DEFAULT_MODEL = Config().from_str(default_model_config)["model"]

# What the trained model is: read from disk on load, never from the config.
MODEL_SETTINGS = (
    "labels",
    "input_width",
    "scheme",
    "temperature",
    "seen_temperature",
    "unseen_temperature",
    "known_entities",
)


def check_settings(
    name: str,
    *,
    scheme: str,
    presets: str,
    threshold: float,
    nbest: int,
    nbest_unit: str,
    threads: int,
) -> None:
    """Raise a ValueError naming the component and the option for a value it cannot take."""
    if scheme not in SCHEMES:
        raise ValueError(f"[{name}] scheme must be one of {SCHEMES}, got {scheme!r}.")
    if presets not in PRESET_MODES:
        raise ValueError(f"[{name}] presets must be one of {PRESET_MODES}, got {presets!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"[{name}] threshold must be in [0, 1], got {threshold}.")
    if nbest < 0:
        raise ValueError(f"[{name}] nbest must be 0 (off) or positive, got {nbest}.")
    if nbest_unit not in ("doc", "sentence"):
        raise ValueError(f"[{name}] nbest_unit must be 'doc' or 'sentence', got {nbest_unit!r}.")
    if threads < 0:
        raise ValueError(f"[{name}] threads must be 0 (automatic) or positive, got {threads}.")
