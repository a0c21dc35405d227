"""Choose what a person should annotate next, from the `bilstm_crf` component's posteriors.

`select` runs the pipeline over unlabelled rows (the batch annotator's `Row`s), scores every
unit of every text by the strategy (see `uncertainty.py`), keeps the best within the budget
and returns them as `Task`s pre-annotated with the model's entities and their probabilities.
The pipeline's components before the tagger run as usual; texts without sentence boundaries
get spaCy's rule-based `sentencizer` for the `sentence` and `span` units. Probabilities use the
component's calibrated temperature.
"""

import bisect
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import numpy
from spacy.attrs import IDX, IS_SPACE, LENGTH
from spacy.language import Language
from spacy.pipeline import Sentencizer
from spacy.tokens import Doc, Span
from spacy.util import minibatch

from ..calibration import bilstm_crf_component
from ..pipeline.spans import sentence_bounds
from .tasks import Task, doc_tokens, span_entities
from .uncertainty import STRATEGIES, UNITS, Unit, choose, piece_units, same_text, span_units


@dataclass
class Selection:
    """The chosen tasks, most informative first, and what the pool held."""

    tasks: list[Task] = field(default_factory=list)
    rows: int = 0
    bad_rows: int = 0
    tokens: int = 0
    candidates: int = 0
    excluded: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        reviewed = sum(task.review_tokens for task in self.tasks)
        shown = sum(len(task.tokens) for task in self.tasks)
        sentences = sum(task.sentences for task in self.tasks)
        return (
            f"{len(self.tasks):,} tasks ({reviewed:,} tokens to review; they show {shown:,} "
            f"tokens in {sentences:,} sentences) chosen from "
            f"{self.candidates:,} candidates in {self.rows:,} rows ({self.tokens:,} tokens; "
            f"{self.bad_rows:,} rows without a usable text, {self.excluded:,} units excluded, "
            f"{self.duplicates:,} repeats of a text passed over) in {self.seconds:.1f} s"
        )


def parse_task_id(task_id: str) -> tuple[str, int, int]:
    """`(source, start, end)` from a task id `SOURCE@START-END` (characters of the source)."""
    source, at, span = str(task_id).rpartition("@")
    start, dash, end = span.partition("-")
    if not at or not dash or not start.isdigit() or not end.isdigit():
        raise ValueError(f"{task_id!r} is not a task id (SOURCE@START-END)")
    return source, int(start), int(end)


def select(
    nlp: Language,
    rows: Iterable[Any],
    *,
    component: str | None = None,
    unit: str = "sentence",
    strategy: str = "mnlp",
    n: int | None = None,
    tokens: int | None = None,
    exclude: Iterable[str] = (),
    seed: int = 0,
    batch_size: int = 256,
    keep_duplicates: bool = False,
) -> Selection:
    """The `n` most informative units of `rows` (or as many as fit in `tokens` tokens to
    review), skipping units that overlap the tasks `exclude` names (their ids), and units
    whose text is the same as a better one's but for case and digits (`same_text`), unless
    `keep_duplicates`."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    begin = time.perf_counter()
    pipe = bilstm_crf_component(nlp, component)
    excluded: dict[str, list[tuple[int, int]]] = {}
    for task_id in exclude:
        source, start, end = parse_task_id(task_id)
        excluded.setdefault(source, []).append((start, end))
    rng = numpy.random.default_rng(seed)
    limit = n if n is not None else tokens
    if limit is None or limit < 1:
        raise ValueError("give a budget: n >= 1 tasks, or tokens >= 1")
    kept = _Best(limit, keep_duplicates)
    result = Selection()
    saved = {key: pipe.cfg[key] for key in ("confidence", "threshold", "nbest")}
    # Entity probabilities are computed for the chosen tasks only, at the end.
    pipe.cfg.update(confidence=False, threshold=0.0, nbest=0)
    need_marginals = unit == "span" or strategy == "entropy"
    need_best = unit != "span" and strategy != "entropy"
    try:
        analyzed = _analyzed(nlp, pipe, rows, unit, (need_marginals, need_best), batch_size, result)
        for doc, source, analysis, spans_key in analyzed:
            for found in _candidates(doc, source, analysis, unit, strategy, rng, spans_key):
                if _overlaps(excluded.get(str(source), ()), found.chars):
                    result.excluded += 1
                    continue
                result.candidates += 1
                result.duplicates += not kept.offer(found)
        best = kept.best()
        units = [Unit(0, found.cost, found.unit.score, found.unit.confidence) for found in best]
        chosen = [best[i] for i in choose(units, n=n, tokens=tokens)]
        docs = list({id(found.doc): found.doc for found in chosen}.values())
        pipe.cfg["confidence"] = True
        for batch in minibatch(docs, size=batch_size):
            pipe.set_annotations(batch, pipe.predict(batch))
    finally:
        pipe.cfg.update(saved)
    result.tasks = [found.build() for found in chosen]
    result.seconds = time.perf_counter() - begin
    return result


def _analyzed(
    nlp: Language,
    pipe: Any,
    rows: Iterable[Any],
    unit: str,
    needs: tuple[bool, bool],
    batch_size: int,
    result: Selection,
) -> Iterator[tuple[Doc, Any, Any, str]]:
    """`(doc, row id, analysis, spans key)` per usable row, the docs annotated by the pipe;
    `needs`: whether the strategy needs the tag posteriors, and the best analyses."""
    before = nlp.pipe_names[: nlp.pipe_names.index(pipe.name)]
    sentencizer = Sentencizer() if unit != "doc" else None
    good = _usable(rows, result)
    for batch in minibatch(good, size=batch_size):
        sources = [source for source, _ in batch]
        with nlp.select_pipes(enable=before):
            docs = list(nlp.pipe(text for _, text in batch))
        if sentencizer is not None:
            docs = [doc if doc.has_annotation("SENT_START") else sentencizer(doc) for doc in docs]
        piece = "sentence" if unit == "sentence" else "doc"
        predictions, analyses = pipe.analyze(docs, piece, marginals=needs[0], best=needs[1])
        pipe.set_annotations(docs, predictions)
        for doc, source, analysis in zip(docs, sources, analyses):
            result.tokens += len(doc)
            yield doc, source, analysis, pipe.cfg["spans_key"]


def _usable(rows: Iterable[Any], result: Selection) -> Iterator[tuple[Any, str]]:
    """`(id, text)` of the rows that have a text; counts them all."""
    for row in rows:
        result.rows += 1
        if row.error is not None:
            result.bad_rows += 1
        else:
            yield row.id, row.text


class _Candidate(NamedTuple):
    """A unit worth a task, before the task is built: its scores, the tokens to review, the
    characters of the row's text they span, its text as `same_text` keys it (with the
    region's place in its sentence, for a span), and how to build the task."""

    unit: Unit
    cost: int
    chars: tuple[int, int]
    key: Any
    doc: Doc
    build: Callable[[], Task]


class _Best:
    """The `limit` best candidates offered (a heap), at most one per key unless
    `keep_duplicates`: a better candidate with a kept one's key takes its place."""

    def __init__(self, limit: int, keep_duplicates: bool) -> None:
        self.limit = limit
        self.keep_duplicates = keep_duplicates
        self.heap: list[tuple[float, int, _Candidate]] = []
        self.by_key: dict[Any, tuple[float, int, _Candidate]] = {}
        self.counter = itertools.count()

    def offer(self, found: _Candidate) -> bool:
        """Consider `found`; False when it or a kept candidate was passed over as a repeat."""
        item = (found.unit.score, next(self.counter), found)
        if not self.keep_duplicates and found.key in self.by_key:
            held = self.by_key[found.key]
            if held[0] >= item[0]:
                return False
            self.heap[self.heap.index(held)] = item
            heapq.heapify(self.heap)
            self.by_key[found.key] = item
            return False
        elif len(self.heap) < self.limit:
            heapq.heappush(self.heap, item)
        elif item[:2] > self.heap[0][:2]:
            dropped = heapq.heapreplace(self.heap, item)
            if not self.keep_duplicates:
                del self.by_key[dropped[2].key]
        else:
            return True
        if not self.keep_duplicates:
            self.by_key[found.key] = item
        return True

    def best(self) -> list[_Candidate]:
        """The kept candidates, the most informative first (ties: the first offered)."""
        return [found for _, _, found in sorted(self.heap, key=lambda item: (-item[0], item[1]))]


def _candidates(
    doc: Doc,
    source: Any,
    analysis: Any,
    unit: str,
    strategy: str,
    rng: numpy.random.Generator,
    spans_key: str,
) -> Iterator[_Candidate]:
    """The doc's candidate units; their tasks are built only for the units chosen."""
    starts, lengths, spaces = doc.to_array([IDX, LENGTH, IS_SPACE]).T
    sentences = sentence_bounds(doc) if unit != "doc" else []
    if unit == "span":
        measure = "lc" if strategy == "mnlp" else strategy
        found = span_units(analysis.marginals, sentences, measure, rng)
    else:
        pieces = [
            (p.start, p.end, p.analyses[0][1] if p.analyses else 0.0) for p in analysis.pieces
        ]
        if not analysis.pieces:  # entropy needs no best analyses: only where pieces are
            pieces = [(first, last, 0.0) for first, last in sentences or [(0, len(doc))]]
        found = piece_units(pieces, analysis.marginals, strategy, rng)
    first_tokens = [first for first, _ in sentences]
    text = doc.text  # once: each read joins every token's text
    for each in found:
        start, end = each.start, each.end
        while start < end and spaces[start]:
            start += 1
        while end > start and spaces[end - 1]:
            end -= 1
        if start == end:
            continue
        if unit == "span":
            sentence = sentences[bisect.bisect_right(first_tokens, start) - 1]
        else:
            sentence = (start, end) if unit == "sentence" else (0, len(doc))
        chars = (int(starts[start]), int(starts[end - 1] + lengths[end - 1]))
        first, last = (
            int(starts[sentence[0]]),
            int(starts[sentence[1] - 1] + lengths[sentence[1] - 1]),
        )
        key = same_text(text[first:last])
        if unit == "span":
            key = (key, chars[0] - first, chars[1] - first)
        build = partial(_task, doc, source, sentence, (start, end), each, unit, strategy, spans_key)
        yield _Candidate(each, end - start, chars, key, doc, build)


def _task(
    doc: Doc,
    source: Any,
    context: tuple[int, int],
    review: tuple[int, int],
    found: Unit,
    unit: str,
    strategy: str,
    spans_key: str,
) -> Task:
    """A task showing the tokens `context` (the doc or a sentence), `review` to review."""
    shown_span = doc[context[0] : context[1]] if context != (0, len(doc)) else doc
    offset = shown_span.start_char if isinstance(shown_span, Span) else 0
    first, last = doc[review[0]].idx, doc[review[1] - 1].idx + len(doc[review[1] - 1])
    group = doc.spans.get(spans_key)
    scores: dict[tuple[int, int, str], float] = {}
    if group is not None:
        for span, score in zip(group, group.attrs.get("scores", ())):
            scores[(span.start, span.end, span.label_)] = float(score)
    shown = [
        span
        for span in doc.ents
        if unit != "span" or (span.end > review[0] and span.start < review[1])
    ]
    return Task(
        id=f"{source}@{first}-{last}",
        text=shown_span.text,
        tokens=doc_tokens(shown_span),
        entities=list(span_entities(shown_span, shown, scores)),
        review=(first - offset, last - offset),
        score=found.score,
        confidence=found.confidence,
        source=source,
        offset=offset,
        meta={"unit": unit, "strategy": strategy},
        sentences=_sentences(doc) if unit == "doc" else 1,
    )


def _sentences(doc: Doc) -> int:
    """How many sentences a person reads in the doc (by spaCy's rule-based sentencizer when
    the doc has no sentence starts)."""
    if not doc.has_annotation("SENT_START"):
        doc = Sentencizer()(doc.copy())
    return len(sentence_bounds(doc))


def _overlaps(regions: Iterable[tuple[int, int]], chars: tuple[int, int]) -> bool:
    """Whether characters `chars` of the row's text overlap one of these ranges."""
    start, end = chars
    return any(first < end and start < last for first, last in regions)
