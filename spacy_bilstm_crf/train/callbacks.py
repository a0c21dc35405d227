"""Config callbacks that turn set-up mistakes into clear errors before anything runs.

- `spacy-bilstm-crf.check_vectors.v1`, for `[initialize.before_init]`: `[initialize] vectors`
  is a pipeline of another language than the one being trained (spaCy would stop with E150).
- `spacy-bilstm-crf.require.v1`, for `[nlp] before_creation`: a config that needs an optional
  package (spacy-transformers for the transformer config) names the extra that installs it.
"""

import importlib.util
from collections.abc import Callable
from pathlib import Path

import srsly
from spacy.language import Language
from spacy.util import registry


@registry.callbacks("spacy-bilstm-crf.check_vectors.v1")
def make_check_vectors() -> Callable[[Language], Language]:
    """Fail before training when `[initialize] vectors` is a pipeline folder of another
    language than the pipeline being trained."""

    def check_vectors(nlp: Language) -> Language:
        source = nlp.config.interpolate()["initialize"].get("vectors")
        meta = Path(str(source)) / "meta.json" if source else None
        if meta is not None and meta.is_file():
            lang = srsly.read_json(meta).get("lang")
            if lang and lang != nlp.lang:
                raise ValueError(
                    f"[initialize] vectors {source} is a '{lang}' pipeline, but the pipeline "
                    f"being trained is '{nlp.lang}'. Write the vectors for '{nlp.lang}' (the "
                    f"project: `spacy project run vectors . --vars.lang {nlp.lang}`; by hand: "
                    f"`python scripts/vectors.py SOURCE OUTPUT --lang {nlp.lang}`), or train "
                    f"with --nlp.lang {lang}."
                )
        return nlp

    return check_vectors


@registry.callbacks("spacy-bilstm-crf.require.v1")
def make_require(module: str, extra: str) -> Callable[[type], type]:
    """Fail before the pipeline is built when `module` is not installed, naming the extra of
    spacy-bilstm-crf that brings it."""

    def require(lang_class: type) -> type:
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"This config needs the {module} package: pip install 'spacy-bilstm-crf[{extra}]'"
            )
        return lang_class

    return require
