"""The model a backend serves: one loaded pipeline version, its entities with probabilities.

`Tagger.predict` runs the pipeline's components up to its `bilstm_crf` component on a batch
of texts (the tokenizer, then an `entity_ruler` or whatever comes before), then the tagger's
`analyze`: the best analysis of each text, each entity's CRF probability (the `confidence`
setting) and the best analysis's log probability. A text's score is that probability per
token, `exp(log P(best analysis) / tokens)` (the MNLP measure `select` ranks by, as a
confidence in [0, 1]): sorted lowest first, the least certain texts come first, long ones
not penalized for being long.

A Tagger is never changed once loaded: a new version is a new Tagger, so a prediction runs
on one version from start to end while another is swapped in. Its predictions run one at a
time: thinc puts the torch module in eval mode for a prediction and back in training mode
after it, so a second thread's prediction would run half of its way with dropout on.
"""

import math
import threading
from dataclasses import dataclass
from pathlib import Path

from spacy.tokens import Doc

from ..annotate.records import load_pipeline
from ..calibration import bilstm_crf_component

BATCH = 256


@dataclass(frozen=True)
class Found:
    """A text's entities `(start_char, end_char, label, probability)` and its score."""

    entities: list[tuple[int, int, str, float]]
    score: float


class Tagger:
    """A loaded pipeline version, for predictions."""

    def __init__(self, path: str | Path, version: str, threads: int = 1) -> None:
        self.nlp = load_pipeline(path, threads=threads, settings={"confidence": True})
        self.pipe = bilstm_crf_component(self.nlp, None)
        self.version = version
        self.path = Path(path)
        names = self.nlp.pipe_names
        self._before = [self.nlp.get_pipe(name) for name in names[: names.index(self.pipe.name)]]
        self._lock = threading.Lock()

    @property
    def labels(self) -> tuple[str, ...]:
        return self.pipe.labels

    @property
    def max_chars(self) -> int:
        return self.nlp.max_length

    def docs(self, texts: list[str]) -> list[Doc]:
        """The texts through the tokenizer and the components before the tagger."""
        docs = [self.nlp.make_doc(text) for text in texts]
        for component in self._before:
            docs = (
                list(component.pipe(docs)) if hasattr(component, "pipe") else map(component, docs)
            )
        return list(docs)

    def predict(self, texts: list[str]) -> list[Found]:
        """Each text's entities and score, in batches of the pipeline's batch size."""
        found: list[Found] = []
        with self._lock:
            for start in range(0, len(texts), BATCH):
                found += self._batch(texts[start : start + BATCH])
        return found

    def _batch(self, texts: list[str]) -> list[Found]:
        docs = self.docs(texts)
        predictions, analyses = self.pipe.analyze(docs, "doc", marginals=False, best=True)
        self.pipe.set_annotations(docs, predictions)
        found = []
        for doc, analysis in zip(docs, analyses):
            log_prob = analysis.pieces[0].analyses[0][1] if analysis.pieces else 0.0
            found.append(Found(self._entities(doc), per_token(log_prob, len(doc))))
        return found

    def redecode(
        self, text: str, entities: list[tuple[int, int, str]], outside: list[tuple[int, int]]
    ) -> Found:
        """The best analysis of `text` under a person's fixes (their entities exactly, their
        `outside` regions in no entity), by the CRF's constrained decoding (`decode_around`):
        the fixed entities with probability 1, the others with their probabilities given the
        fixes; the score as `predict`'s, given the fixes. A ValueError names fixes that
        overlap or that no analysis satisfies together."""
        from ..pipeline.interactive import decode_around

        with self._lock:
            found = decode_around(self.nlp, text, entities=entities, outside=outside, k=1)
        spans = [(e.start_char, e.end_char, e.label, e.probability) for e in found.entities]
        log_prob = math.log(found.probability) if found.probability > 0 else -math.inf
        return Found(spans, per_token(log_prob, len(found.doc)))

    def _entities(self, doc: Doc) -> list[tuple[int, int, str, float]]:
        """`doc.ents` with the tagger's probabilities; entities an earlier component set are
        fixed for the tagger: 1.0."""
        group = doc.spans.get(self.pipe.cfg["spans_key"])
        scores = {}
        if group is not None:
            for span, score in zip(group, group.attrs.get("scores", ())):
                scores[(span.start, span.end, span.label_)] = float(score)
        return [
            (
                ent.start_char,
                ent.end_char,
                ent.label_,
                scores.get((ent.start, ent.end, ent.label_), 1.0),
            )
            for ent in doc.ents
        ]


def per_token(log_prob: float, tokens: int) -> float:
    """The probability of the best analysis per token, in [0, 1]; 1.0 for an empty text."""
    if not tokens:
        return 1.0
    return math.exp(min(0.0, log_prob) / tokens) if math.isfinite(log_prob) else 0.0
