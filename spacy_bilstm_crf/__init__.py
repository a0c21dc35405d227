"""spacy-bilstm-crf: a BiLSTM-CRF named-entity tagger for spaCy pipelines.

spaCy finds the `bilstm_crf` factory and the architectures through entry points, so
`nlp.add_pipe("bilstm_crf")` needs no import. The names below are imported on first use:
importing the package (as `python -m spacy_bilstm_crf` does before anything else) loads
neither torch nor spaCy, so a Ctrl-C while a command starts is the command's to handle.

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

# Public name -> the module that defines it.
_EXPORTS = {
    "build_bilstm_crf": ".ml",
    "build_concat_features": ".ml",
    "build_projected_embed": ".ml",
    "build_word_char_embed": ".ml",
    "build_word_char_embed_v2": ".ml",
    "CRF": ".nn",
    "BiLSTMTagger": ".nn",
    "ConstraintError": ".nn",
    "BiLSTMCRFTagger": ".pipeline",
    "decode_around": ".pipeline",
    "make_bilstm_crf": ".pipeline",
    "TagSets": ".tag_sets",
    "Constraints": ".tags",
    "allowed_transitions": ".tags",
    "tag_names": ".tags",
    "make_check_vectors": ".train",
    "make_require": ".train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
