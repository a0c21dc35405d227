"""The `bilstm_crf` pipeline component: a trainable BiLSTM-CRF entity tagger writing `doc.ents`."""

import os
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy
import srsly
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.training.iob_utils import biluo_to_iob, iob_to_biluo, tags_to_entities
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate
from thinc.types import Floats2d

from . import model as bilstm_crf_model
from .segments import split_by
from .tags import SCHEMES, restart_tags, split_tag, tag_names

default_model_config = """
[model]
@architectures = "spacy-bilstm-crf.BiLSTMCRF.v1"
hidden_width = 256
depth = 1
dropout = 0.25
max_length = 512

[model.tok2vec]
@architectures = "spacy-bilstm-crf.WordCharEmbed.v1"
width = 128
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
rows = [5000, 1000, 2500, 2500]
include_static_vectors = false
char_width = 16
char_count = 8
word_dropout = 0.25
"""
DEFAULT_MODEL = Config().from_str(default_model_config)["model"]


@Language.factory(
    "bilstm_crf",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": DEFAULT_MODEL,
        "overwrite": False,
        "confidence": False,
        "spans_key": "bilstm_crf",
        "scheme": "BILUO",
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_bilstm_crf(
    nlp: Language,
    name: str,
    model: Model[list[Doc], list[Floats2d]],
    overwrite: bool,
    confidence: bool,
    spans_key: str,
    scheme: str,
    scorer: Callable | None,
) -> "BiLSTMCRFTagger":
    """A BiLSTM-CRF entity tagger. `overwrite`: replace entities set by earlier components
    (else keep them and add only non-overlapping ones). `confidence`: also store each predicted
    entity in `doc.spans[spans_key]` with its CRF probability in `attrs["scores"]`. `scheme`:
    the tags the model predicts, "BILUO" (the default, as spaCy's `ner` uses; 0.8 test F1 better
    than BIO on CoNLL-2003) or "BIO". `doc.ents` are the same kind either way."""
    return BiLSTMCRFTagger(
        nlp.vocab,
        model,
        name,
        overwrite=overwrite,
        confidence=confidence,
        spans_key=spans_key,
        scheme=scheme,
        scorer=scorer,
    )


class Predictions(NamedTuple):
    """What `predict` returns: tag ids per doc, and entity probabilities when asked for."""

    tags: list[list[int]]
    probs: list[list[float]] | None


class BiLSTMCRFTagger(TrainablePipe):
    """Tags tokens with BILUO or BIO tags by a BiLSTM-CRF (Viterbi); writes them as `doc.ents`."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "bilstm_crf",
        *,
        overwrite: bool = False,
        confidence: bool = False,
        spans_key: str = "bilstm_crf",
        scheme: str = "BILUO",
        scorer: Callable | None = get_ner_prf,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"[{name}] scheme must be one of {SCHEMES}, got {scheme!r}.")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: dict[str, Any] = {
            "labels": [],
            "input_width": None,
            "overwrite": overwrite,
            "confidence": confidence,
            "spans_key": spans_key,
            "scheme": scheme,
        }
        self._pid = os.getpid()
        # Decoded sequences, and those the softmax head got wrong before repair.
        self.decode_stats = {"sequences": 0, "invalid": 0}

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> list[str]:
        return list(self.labels)

    @property
    def tag_names(self) -> list[str]:
        """`O`, then `B-X`, `I-X` (BILUO: also `L-X`, `U-X`) for each label X, in order."""
        return tag_names(self.labels, self.cfg["scheme"])

    def add_label(self, label: str) -> int:
        if not isinstance(label, str) or not label or label != label.strip():
            raise ValueError(f"[{self.name}] Invalid entity label {label!r}.")
        if label in self.labels:
            return 0
        if bilstm_crf_model.is_built(self.model):
            raise ValueError(
                f"[{self.name}] Cannot add label {label!r}: the model is already initialized "
                f"with labels {self.labels}. Add every label before nlp.initialize()."
            )
        self.cfg["labels"].append(label)
        self.vocab.strings.add(label)
        return 1

    def predict(self, docs: Iterable[Doc]) -> Predictions:
        """Viterbi tag ids per doc (and entity probabilities with `confidence`)."""
        docs = list(docs)
        self._require_built()
        if os.getpid() != self._pid:  # a worker forked by nlp.pipe(n_process=...)
            bilstm_crf_model.use_one_thread()
            self._pid = os.getpid()
        emissions = self.model.predict(docs) if any(len(doc) for doc in docs) else []
        segments = bilstm_crf_model.doc_segments(self.model, docs)
        paths, invalid = bilstm_crf_model.tagger_decode(self.model, emissions)
        self.decode_stats["sequences"] += len(paths)
        self.decode_stats["invalid"] += invalid
        tags, start = [], 0
        for lengths in segments:
            tags.append([tag for path in paths[start : start + len(lengths)] for tag in path])
            start += len(lengths)
        probs = self._span_probs(emissions, segments, paths) if self.cfg["confidence"] else None
        return Predictions(tags, probs)

    def set_annotations(self, docs: Iterable[Doc], predictions: Predictions) -> None:
        """Write the predicted entities to `doc.ents`, keeping earlier ones unless overwriting."""
        names = self.tag_names
        for i, (doc, ids) in enumerate(zip(docs, predictions.tags)):
            spans, probs = [], []
            for k, (start, end, label) in enumerate(_entities([names[t] for t in ids])):
                span = _trim_spaces(doc, start, end, label)
                if span is not None:
                    spans.append(span)
                    probs.append(predictions.probs[i][k] if predictions.probs else 0.0)
            kept = [] if self.cfg["overwrite"] else list(doc.ents)
            taken = {token.i for span in kept for token in span}
            new = [span for span in spans if not any(t.i in taken for t in span)]
            doc.set_ents(kept + new, default="outside")
            if predictions.probs is not None:
                group = SpanGroup(doc, name=self.cfg["spans_key"], spans=spans)
                group.attrs["scores"] = numpy.asarray(probs, dtype="float32")
                doc.spans[self.cfg["spans_key"]] = group

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optimizer | None = None,
        losses: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """One step on the CRF negative log-likelihood, end to end through the tok2vec."""
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "BiLSTMCRFTagger.update")
        self._require_built()
        docs = [eg.predicted for eg in examples]
        if not any(len(doc) for doc in docs):
            return losses
        set_dropout_rate(self.model, drop)
        emissions, backprop = self.model.begin_update(docs)
        loss, d_emissions = self.get_loss(examples, emissions)
        backprop(d_emissions)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def get_loss(self, examples: Iterable[Example], scores: list[Floats2d]) -> tuple[float, Any]:
        """Summed CRF negative log-likelihood over segments, and its gradient."""
        examples = list(examples)
        validate_examples(examples, "BiLSTMCRFTagger.get_loss")
        segments = bilstm_crf_model.doc_segments(self.model, [eg.predicted for eg in examples])
        names = self.tag_names
        index = {name: i for i, name in enumerate(names)}
        first, last = restart_tags(names, self.cfg["scheme"])
        gold = []
        for eg, lengths in zip(examples, segments):
            for piece in split_by(self._gold_ids(eg, index), lengths):
                # An entity cut by a segment boundary restarts there, as it does in prediction.
                piece[0] = first.get(piece[0], piece[0])
                piece[-1] = last.get(piece[-1], piece[-1])
                gold.append(self.model.ops.asarray1i(piece))
        loss, d_scores = bilstm_crf_model.tagger_loss(self.model, scores, gold)
        if not numpy.isfinite(loss):
            raise ValueError(
                f"[{self.name}] The CRF loss is {loss}: a gold tag sequence has no allowed path, "
                "or the model diverged (try a lower learning rate)."
            )
        return loss, d_scores

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Language | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        """Collect labels (from the examples unless given), then build the model."""
        validate_get_examples(get_examples, "BiLSTMCRFTagger.initialize")
        if labels is not None:
            for label in labels:
                self.add_label(label)
        else:
            for eg in get_examples():
                for ent in eg.reference.ents:
                    self.add_label(ent.label_)
        if not self.labels:
            raise ValueError(
                f"[{self.name}] No entity labels found: the training examples have no "
                "entities and no labels were given (e.g. from `spacy init labels`)."
            )
        bilstm_crf_model.set_tags(self.model, self.tag_names, self.cfg["scheme"])
        sample = [eg.predicted for eg in islice(get_examples(), 10)]
        self.model.initialize(X=sample or None)
        self.cfg["input_width"] = bilstm_crf_model.input_width(self.model)

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        self._require_built()
        return super().to_bytes(exclude=exclude)

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> None:
        self._require_built()
        super().to_disk(path, exclude=exclude)

    def from_bytes(
        self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()
    ) -> "BiLSTMCRFTagger":
        msg = srsly.msgpack_loads(bytes_data)
        if "cfg" not in exclude:
            self.cfg.update(srsly.json_loads(msg["cfg"]))
        if "vocab" not in exclude:
            self.vocab.from_bytes(msg["vocab"], exclude=exclude)
        if "model" not in exclude:
            self._build_from_cfg()
            self.model.from_bytes(msg["model"])
        return self

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> "BiLSTMCRFTagger":
        path = util.ensure_path(path)

        def load_model(model_path: Path) -> None:
            self._build_from_cfg()
            with model_path.open("rb") as file_:
                self.model.from_bytes(file_.read())

        deserialize = {
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self

    def _build_from_cfg(self) -> None:
        """Build the model from the saved labels and input width, before loading weights."""
        if not self.labels or self.cfg.get("input_width") is None:
            raise ValueError(f"[{self.name}] The saved config has no labels or input width.")
        bilstm_crf_model.set_tags(self.model, self.tag_names, self.cfg["scheme"])
        bilstm_crf_model.build(self.model, self.cfg["input_width"])

    def _require_built(self) -> None:
        if not bilstm_crf_model.is_built(self.model):
            raise ValueError(
                f"[{self.name}] The component is not initialized: call nlp.initialize() "
                "(or train it with `spacy train`) before using it."
            )

    def _gold_ids(self, example: Example, index: dict[str, int]) -> list[int]:
        """Gold tag ids (by `index`, tag name to id) on the predicted tokens: `-1` where
        annotation is missing."""
        ids = []
        tags = example.get_aligned_ner()
        for tag in biluo_to_iob(tags) if self.cfg["scheme"] == "BIO" else tags:
            if tag is None or tag == "-":
                ids.append(-1)
            elif tag in index:
                ids.append(index[tag])
            else:
                label = split_tag(tag)[1]
                raise ValueError(
                    f"[{self.name}] Entity label {label!r} in the training data is not one of "
                    f"the component's labels {self.labels}: add it before initialization."
                )
        return ids

    def _span_probs(
        self, emissions: list[Floats2d], segments: list[list[int]], paths: list[list[int]]
    ) -> list[list[float]]:
        """Per doc, the CRF probability of each predicted entity (spans as in set_annotations)."""
        names = self.tag_names
        spans, owners = [], []
        segment = 0
        for doc_index, lengths in enumerate(segments):
            for _ in lengths:
                for start, end, label in _entities([names[t] for t in paths[segment]]):
                    spans.append((segment, start, end, _span_tags(names, label, end - start)))
                    owners.append(doc_index)
                segment += 1
        probs = bilstm_crf_model.crf_span_probs(self.model, emissions, spans)
        per_doc: list[list[float]] = [[] for _ in segments]
        for owner, prob in zip(owners, probs):
            per_doc[owner].append(prob)
        return per_doc


def _entities(tags: list[str]) -> list[tuple[int, int, str]]:
    """`(start, end, label)` of the entities in BIO or BILUO tags, `end` exclusive.

    Invalid sequences (only the softmax head makes them) are read as spaCy reads IOB: an
    `I-X` that continues nothing starts an entity.
    """
    biluo = iob_to_biluo(biluo_to_iob(tags))
    return [(start, end + 1, label) for label, start, end in tags_to_entities(biluo)]


def _span_tags(names: list[str], label: str, length: int) -> list[int]:
    """Tag ids of an entity of `length` tokens, then the id that would continue it."""
    if "U-" + label in names:
        inside, last = names.index(f"I-{label}"), names.index(f"L-{label}")
        if length == 1:
            return [names.index(f"U-{label}"), inside]
        return [names.index(f"B-{label}")] + [inside] * (length - 2) + [last, inside]
    inside = names.index(f"I-{label}")
    return [names.index(f"B-{label}")] + [inside] * (length - 1) + [inside]


def _trim_spaces(doc: Doc, start: int, end: int, label: str) -> Span | None:
    """The span without leading or trailing whitespace tokens, or None if nothing is left."""
    while start < end and doc[start].is_space:
        start += 1
    while end > start and doc[end - 1].is_space:
        end -= 1
    return Span(doc, start, end, label=label) if start < end else None
