"""Decode a text around what a person fixed: the entry point for interactive annotation.

A person who corrects one entity should not have to correct the rest: the CRF decodes the
whole text again under every fix so far ("correction propagation": Kristjansson et al., AAAI
2004; Culotta and McCallum, AAAI 2005). `decode_around` takes a pipeline (or its `bilstm_crf`
component), a text or Doc and the person's fixes in characters: entities with their labels,
regions outside every entity, and clicks (a character of a token that lies inside an entity of
a label, whose span the CRF completes). It returns the best analysis under them, each entity
with its probability given the fixes, and the k best analyses with theirs. Entities and
blocked tokens that components before the tagger set are fixed too (unless the component
`overwrite`s), except where a person's fix touches them: the person wins. A Label Studio ML
backend calls it; it knows nothing of HTTP.
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc, Span

from ..ml import bilstm_crf as bilstm_crf_model
from ..ml import crf_ops
from ..tag_sets import TagSets
from . import presets
from .analyses import best_analyses, entity_probs
from .bilstm_crf import BiLSTMCRFTagger
from .spans import doc_entities


class Entity(NamedTuple):
    """An entity of an analysis, in characters of the doc's text. `probability`: that this
    exact entity is in the text, given the fixes (1.0 for fixed ones). `source`: "person" (a
    fixed entity), "preset" (set by a component before the tagger), "click" (found by the
    tagger around a clicked token) or "model"."""

    start_char: int
    end_char: int
    label: str
    probability: float
    source: str


class Labelling(NamedTuple):
    """One analysis of the whole text: its entities in text order, and its probability given
    the fixes."""

    entities: list[Entity]
    probability: float


class Interaction(NamedTuple):
    """`decode_around`'s answer: the doc (a copy, `doc.ents` set to the best analysis), the
    best analysis's entities and probability, and the `k` best analyses, best first (the first
    is the best)."""

    doc: Doc
    entities: list[Entity]
    probability: float
    analyses: list[Labelling]


def decode_around(
    nlp: Language | BiLSTMCRFTagger,
    text: str | Doc,
    *,
    entities: Iterable[tuple[int, int, str]] = (),
    outside: Iterable[tuple[int, int]] = (),
    clicks: Iterable[tuple[int, str | Sequence[str]]] = (),
    k: int = 5,
    component: str | None = None,
) -> Interaction:
    """The best analysis of `text` and the `k` best, given what a person fixed.

    `nlp`: a pipeline with a `bilstm_crf` component (`component` names it when there are
    several), or the component itself (then `text` must be a Doc). A text runs through the
    components before the tagger (an `entity_ruler`: presets); a Doc is used as it is, copied.
    `entities`: `(start_char, end_char, label)` that are exactly entities; `outside`:
    `(start_char, end_char)` regions in no entity; `clicks`: `(char, label or labels)`, the
    token at that character lies inside an entity of one of the labels. Character spans take
    every token they touch. An entity of a label the tagger does not have is kept as given and
    keeps the tagger out of its tokens. Raises ValueError naming the characters or tokens when
    fixes overlap or no analysis satisfies them together.
    """
    pipe, doc = _pipe_and_doc(nlp, text, component)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    fixed = [(_tokens(doc, start, end), label) for start, end, label in entities]
    regions = [_tokens(doc, start, end) for start, end in outside]
    clicked = [(_tokens(doc, char, char + 1).start, _labels(labels)) for char, labels in clicks]
    _check_overlaps([span for span, _ in fixed] + regions)
    touched = numpy.zeros(len(doc), dtype=bool)
    for span in [span for span, _ in fixed] + regions:
        touched[span.start : span.end] = True
    touched[[position for position, _ in clicked]] = True
    earlier = None if pipe.cfg["overwrite"] else _untouched(presets.read_presets(doc), touched)
    sets = TagSets(pipe.labels, len(doc), pipe.cfg["scheme"])
    if earlier is not None:
        sets.allowed &= presets.tag_sets(doc, earlier, pipe.labels, pipe.cfg["scheme"])
    person = [Span(doc, span.start, span.end, label=label) for span, label in fixed]
    for span in person:
        if span.label_ in pipe.labels:
            sets.entity(span.start, span.end, span.label_)
        else:
            sets.outside(span.start, span.end)
    for span in regions:
        sets.outside(span.start, span.end)
    for position, labels in clicked:
        sets.inside(position, labels)
    given = [(span, "person") for span in person]
    given += [(span, "preset") for span in (earlier.entities if earlier else [])]
    analyses = _analyses(pipe, doc, sets.allowed, given, [p for p, _ in clicked], k)
    best = analyses[0]
    spans = [doc.char_span(e.start_char, e.end_char, label=e.label) for e in best.entities]
    doc.set_ents(spans, blocked=earlier.blocked if earlier else [], default="outside")
    return Interaction(doc, best.entities, best.probability, analyses)


def _analyses(
    pipe: BiLSTMCRFTagger,
    doc: Doc,
    allowed: numpy.ndarray,
    given: list[tuple[Span, str]],
    clicked: list[int],
    k: int,
) -> list[Labelling]:
    """The `k` best analyses under the tag sets `allowed` `(T, K)`, the `given` entities
    (fixed, with their sources) kept as they are, the tagger's entities with probabilities."""
    model, cfg = pipe.model, pipe.cfg
    if not len(doc):
        return [Labelling([], 1.0)]
    taken = numpy.zeros(len(doc), dtype=bool)  # tokens of fixed entities: their tags forced
    for span, _ in given:
        taken[span.start : span.end] = True
    fixed_entities = [_entity(span, 1.0, source) for span, source in given]
    with bilstm_crf_model.torch_threads(model, pipe._threads()):
        emissions = model.predict([doc])
        segments = bilstm_crf_model.doc_segments(model, [doc])
        sets = presets.segment_candidates([allowed], segments, pipe.tag_names, cfg["scheme"])
        try:
            found = best_analyses(
                model, [doc], emissions, segments, k, "doc", cfg["temperature"], sets
            )[0][0].analyses
        except crf_ops.ConstraintError as error:
            where = presets.conflict(error, [doc], segments)
            raise ValueError(f"No analysis satisfies the fixes together at {where}.") from None
        out = []
        for ids, log_prob in found:
            paths = numpy.split(ids, numpy.cumsum(segments[0])[:-1])
            probs = entity_probs(model, [doc], emissions, segments, paths, cfg, sets)[0]
            read, kept = doc_entities(doc, ids, segments[0], cfg["scheme"])
            own = []
            for start, end, label, prob in zip(*read, probs[kept]):
                if not taken[start:end].any():
                    span = Span(doc, int(start), int(end), label=pipe.labels[label])
                    source = "click" if any(start <= p < end for p in clicked) else "model"
                    own.append(_entity(span, float(prob), source))
            ordered = sorted(fixed_entities + own, key=lambda entity: entity.start_char)
            out.append(Labelling(ordered, float(numpy.exp(log_prob))))
    return out


def _pipe_and_doc(
    nlp: Language | BiLSTMCRFTagger, text: str | Doc, component: str | None
) -> tuple[BiLSTMCRFTagger, Doc]:
    """The component and a doc of `text` (run through the components before it)."""
    if isinstance(nlp, BiLSTMCRFTagger):
        if not isinstance(text, Doc):
            raise TypeError("Given the component alone, pass a Doc: it has no tokenizer.")
        return nlp, text.copy()
    ours = [name for name in nlp.pipe_names if isinstance(nlp.get_pipe(name), BiLSTMCRFTagger)]
    if component is None and len(ours) != 1:
        raise ValueError(f"Name the bilstm_crf component to use: the pipeline has {ours}.")
    name = component if component is not None else ours[0]
    if name not in ours:
        raise ValueError(f"The pipeline has no bilstm_crf component {name!r}; it has {ours}.")
    pipe = nlp.get_pipe(name)
    if isinstance(text, Doc):
        return pipe, text.copy()
    with nlp.select_pipes(enable=nlp.pipe_names[: nlp.pipe_names.index(name)]):
        return pipe, nlp(text)


def _tokens(doc: Doc, start: int, end: int) -> Span:
    """The tokens that characters `start..end-1` touch; an error if none."""
    span = None
    if 0 <= start < end <= len(doc.text):
        span = doc.char_span(start, end, alignment_mode="expand")
    if span is None or not len(span):
        raise ValueError(f"Characters {start}..{end} ({doc.text[start:end]!r}) touch no token.")
    return span


def _labels(labels: str | Sequence[str]) -> list[str]:
    return [labels] if isinstance(labels, str) else list(labels)


def _check_overlaps(spans: list[Span]) -> None:
    """An error naming the first two fixed spans that share a token."""
    ordered = sorted(spans, key=lambda span: (span.start, span.end))
    for first, second in zip(ordered, ordered[1:]):
        if second.start < first.end:
            raise ValueError(
                f"Fixes overlap: characters {first.start_char}..{first.end_char} "
                f"({first.text!r}) and {second.start_char}..{second.end_char} ({second.text!r})."
            )


def _untouched(found: presets.Presets | None, touched: numpy.ndarray) -> presets.Presets | None:
    """The presets that share no token with a person's fix."""
    if found is None:
        return None
    entities = [ent for ent in found.entities if not touched[ent.start : ent.end].any()]
    blocked = [span for span in found.blocked if not touched[span.start]]
    taken = numpy.zeros_like(found.taken)
    for span in entities + blocked:
        taken[span.start : span.end] = True
    return presets.Presets(entities, blocked, taken)


def _entity(span: Span, probability: float, source: str) -> Entity:
    return Entity(span.start_char, span.end_char, span.label_, probability, source)
