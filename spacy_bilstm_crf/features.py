"""Token features for the tagger: hashed word attributes plus characters, as NER taggers need.

Registered as `spacy-bilstm-crf.WordCharEmbed.v1`. No contextual encoder: the BiLSTM is the
encoder, so the vectors go to it straight from the embedding tables.
"""

from spacy.ml._character_embed import CharacterEmbed
from spacy.ml.models.tok2vec import MultiHashEmbed
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, concatenate
from thinc.types import Floats2d


@registry.architectures("spacy-bilstm-crf.WordCharEmbed.v1")
def build_word_char_embed(
    width: int,
    attrs: list[str],
    rows: list[int],
    include_static_vectors: bool = False,
    char_width: int = 16,
    char_count: int = 8,
) -> Model[list[Doc], list[Floats2d]]:
    """Per-token vectors of `width + char_width * char_count` values.

    `attrs`/`rows` and `include_static_vectors` are those of spaCy's `MultiHashEmbed` (e.g.
    NORM, PREFIX, SUFFIX, SHAPE); the characters are spaCy's `CharacterEmbed` features: the
    first and last `char_count // 2` UTF-8 bytes of each word, `char_width` values each.
    """
    words = MultiHashEmbed(
        width=width, attrs=attrs, rows=rows, include_static_vectors=include_static_vectors
    )
    chars = CharacterEmbed(nM=char_width, nC=char_count)
    model: Model[list[Doc], list[Floats2d]] = concatenate(words, chars)
    model.set_dim("nO", width + char_width * char_count, force=True)
    return model
