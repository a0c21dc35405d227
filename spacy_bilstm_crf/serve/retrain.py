"""Train a saved pipeline further on a person's answers: warm-started, on partial labels,
mixed with its own training data so that a few answers do not make it forget.

As the annotation loop's simulation does (`benchmarks/scripts/active_learning.py`), a round
loads the last weights, trains a fixed number of steps with the pipeline's own optimizer
settings (`[training.optimizer]`, its schedule over the round's steps) and dropout, and keeps
the optimizer's averaged weights. The answers become docs through `active/ingest.py`: the
tokens a person reviewed labelled, `O` included, the rest missing (the CRF sums over them).
An entity whose label the tagger lacks leaves its tokens missing rather than failing the
round. With training data, each step's batch is half answers, half training docs (by words).
Only the `bilstm_crf` component is updated.
"""

import random
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example
from spacy.util import registry
from thinc.api import Optimizer

from ..active.answers import Answer, Skipped
from ..active.ingest import Ingested, ingest
from ..calibration import bilstm_crf_component


class Stopped(Exception):
    """The server is stopping: the round is dropped, nothing was written."""


@dataclass(frozen=True)
class RetrainSettings:
    """Steps per round, words per batch, the share of each batch's words taken from the
    training data (when given), torch threads, and the seed of the round's shuffling."""

    steps: int = 300
    batch_words: int = 1000
    mix: float = 0.5
    threads: int = 1
    seed: int = 0


@dataclass
class Round:
    """A trained round: the pipeline and its optimizer, and what went in."""

    nlp: Language
    optimizer: Optimizer
    ingested: Ingested
    steps: int
    seconds: float
    loss: float

    def averaged(self) -> AbstractContextManager:
        """Inside the block, the tagger holds the optimizer's averaged weights (those to save)."""
        if not self.optimizer.averages:
            return nullcontext()
        return bilstm_crf_component(self.nlp, None).model.use_params(self.optimizer.averages)

    def info(self) -> dict[str, Any]:
        return {
            "answers": self.ingested.answers,
            "docs": len(self.ingested.docs),
            "skipped": dict(self.ingested.skipped),
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "loss": round(self.loss, 3),
        }


def retrain(
    source: str | Path,
    answers: list[Answer | Skipped],
    train: str | Path | None,
    settings: RetrainSettings,
    stop: threading.Event | None = None,
) -> Round:
    """Load `source`, train it `settings.steps` steps on `answers` (and `train`'s docs),
    and return it (save it inside `averaged()`)."""
    begin = time.perf_counter()
    nlp = spacy.load(source)
    pipe = bilstm_crf_component(nlp, None)
    pipe.cfg["threads"] = settings.threads
    ingested = ingest(nlp, answers)
    own = [_example(nlp, _known_labels_only(doc, pipe.labels)) for doc in ingested.docs]
    own = [example for example in own if len(example.reference)]
    if not own:
        raise ValueError(f"nothing to train on: {ingested}")
    given = []
    if train is not None:
        given = [_example(nlp, doc) for doc in DocBin().from_disk(train).get_docs(nlp.vocab)]
    optimizer = _optimizer(nlp, settings.steps)
    drop = float(nlp.config.get("training", {}).get("dropout", 0.1))
    rng = random.Random(settings.seed)
    share = settings.mix if given else 0.0
    streams = [_batches(own, settings.batch_words * (1 - share), rng)]
    if given:
        streams.append(_batches(given, settings.batch_words * share, rng))
    losses: dict[str, float] = {}
    for _ in range(settings.steps):
        if stop is not None and stop.is_set():
            raise Stopped
        batch = [example for stream in streams for example in next(stream)]
        pipe.update(batch, drop=drop, sgd=optimizer, losses=losses)
        optimizer.step_schedules()
    loss = losses.get(pipe.name, 0.0) / max(1, settings.steps)
    return Round(nlp, optimizer, ingested, settings.steps, time.perf_counter() - begin, loss)


def _example(nlp: Language, gold: Doc) -> Example:
    """The gold doc with a copy of its tokens and nothing else as what the model reads."""
    spaces = [bool(token.whitespace_) for token in gold]
    words = [token.text for token in gold]
    return Example(Doc(nlp.vocab, words=words, spaces=spaces), gold)


def _known_labels_only(doc: Doc, labels: tuple[str, ...]) -> Doc:
    """The doc with the tokens of entities whose label the tagger lacks set missing."""
    unknown = [ent for ent in doc.ents if ent.label_ not in labels]
    if unknown:
        kept = [ent for ent in doc.ents if ent.label_ in labels]
        missing = [Span(doc, ent.start, ent.end) for ent in unknown]
        doc.set_ents(kept, missing=missing, default="unmodified")
    return doc


def _optimizer(nlp: Language, steps: int) -> Optimizer:
    """The pipeline's own optimizer, its learning-rate schedule over `steps`."""
    settings = dict(nlp.config.get("training", {}).get("optimizer") or {"@optimizers": "Adam.v1"})
    schedule = settings.get("learn_rate")
    if isinstance(schedule, dict) and "total_steps" in schedule:
        settings["learn_rate"] = {**schedule, "total_steps": steps}
    return registry.resolve({"optimizer": settings})["optimizer"]


def _batches(examples: list[Example], words: float, rng: random.Random) -> Iterator[list[Example]]:
    """Endless batches of about `words` words (at least one doc each), reshuffled each pass."""
    examples = list(examples)
    while True:
        rng.shuffle(examples)
        batch: list[Example] = []
        size = 0
        for example in examples:
            batch.append(example)
            size += len(example.reference)
            if size >= words:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch
