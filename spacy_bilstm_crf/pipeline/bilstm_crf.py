"""The `bilstm_crf` pipeline component: a trainable BiLSTM-CRF entity tagger writing `doc.ents`."""

import os
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy
import srsly
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer, set_dropout_rate
from thinc.types import Floats2d

from ..ml import bilstm_crf as bilstm_crf_model
from ..ml import crf_ops
from ..ml.segments import split_by
from ..tags import tag_names
from ..train.gold import UnknownLabelError, gold_tag_ids, restart_segments
from . import presets
from .analyses import Analysis, Piece, Predictions, best_analyses, entity_probs
from .known_entities import training_keys
from .settings import DEFAULT_MODEL, MODEL_SETTINGS, check_settings
from .spans import docs_entities, set_nbest


@Language.factory(
    "bilstm_crf",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": DEFAULT_MODEL,
        "overwrite": False,
        "presets": "fixed",
        "confidence": False,
        "spans_key": "bilstm_crf",
        "threshold": 0.0,
        "nbest": 0,
        "nbest_unit": "doc",
        "scheme": "BILUO",
        "threads": 0,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_bilstm_crf(
    nlp: Language,
    name: str,
    model: Model[list[Doc], list[Floats2d]],
    overwrite: bool,
    presets: str,
    confidence: bool,
    spans_key: str,
    threshold: float,
    nbest: int,
    nbest_unit: str,
    scheme: str,
    threads: int,
    scorer: Callable | None,
) -> "BiLSTMCRFTagger":
    """A BiLSTM-CRF entity tagger (the options are those of README.md's table).

    `overwrite`: replace entities of earlier components; else `presets` "fixed": decode around
    them (their entities fixed, blocked tokens outside), or "keep": keep them and drop the
    tagger's entities that overlap them (`presets.py`). `confidence`: each entity also in
    `doc.spans[spans_key]`, its CRF probability in `attrs["scores"]`; `threshold`: keep only
    entities whose probability reaches it. `nbest`: the `nbest` most probable analyses of each
    doc (or sentence: `nbest_unit`) as span groups `f"{spans_key}_nbest_{rank}"`. `scheme`:
    the tags the CRF predicts, "BILUO" or "BIO". `threads`: CPU threads (0: up to 2).
    """
    return BiLSTMCRFTagger(
        nlp.vocab,
        model,
        name,
        overwrite=overwrite,
        presets=presets,
        confidence=confidence,
        spans_key=spans_key,
        threshold=threshold,
        nbest=nbest,
        nbest_unit=nbest_unit,
        scheme=scheme,
        threads=threads,
        scorer=scorer,
    )


class BiLSTMCRFTagger(TrainablePipe):
    """Tags tokens with BILUO or BIO tags by a BiLSTM-CRF (Viterbi); writes them as `doc.ents`."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "bilstm_crf",
        *,
        overwrite: bool = False,
        presets: str = "fixed",
        confidence: bool = False,
        spans_key: str = "bilstm_crf",
        threshold: float = 0.0,
        nbest: int = 0,
        nbest_unit: str = "doc",
        scheme: str = "BILUO",
        threads: int = 0,
        scorer: Callable | None = get_ner_prf,
    ) -> None:
        check_settings(
            name,
            scheme=scheme,
            presets=presets,
            threshold=threshold,
            nbest=nbest,
            nbest_unit=nbest_unit,
            threads=threads,
        )
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: dict[str, Any] = {
            "labels": [],
            "input_width": None,
            "overwrite": overwrite,
            "presets": presets,
            "confidence": confidence,
            "spans_key": spans_key,
            "threshold": threshold,
            "nbest": nbest,
            "nbest_unit": nbest_unit,
            "scheme": scheme,
            "threads": threads,
            # The calibration temperatures (see calibration.py): part of the trained model.
            # `temperature` for n-best analyses, and for entities unless the two below are
            # set: one for entities among the training entities, one for new ones.
            "temperature": 1.0,
            "seen_temperature": None,
            "unseen_temperature": None,
            # Hashed keys of the training entities' texts (see known_entities.py).
            "known_entities": [],
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
        """Viterbi tag ids per doc (and entity probabilities with `confidence` or a
        `threshold`)."""
        docs = list(docs)
        self._require_built()
        with bilstm_crf_model.torch_threads(self.model, self._threads()):
            emissions = self.model.predict(docs) if any(len(doc) for doc in docs) else []
            return self._predictions(docs, emissions, self._fixed(docs))

    def analyze(
        self, docs: Iterable[Doc], unit: str = "doc", marginals: bool = True, best: bool = True
    ) -> tuple[Predictions, list[Analysis]]:
        """`predict`'s output and, per doc, what choosing texts to annotate needs: the best
        analysis of each piece (the doc, or each sentence: `unit`) with its log probability
        (no pieces without `best`), and each token's tag posteriors (None without
        `marginals`), all at the calibrated `temperature` and given the presets."""
        if unit not in ("doc", "sentence"):
            raise ValueError(f"[{self.name}] unit must be 'doc' or 'sentence', got {unit!r}.")
        docs = list(docs)
        self._require_built()
        with bilstm_crf_model.torch_threads(self.model, self._threads()):
            emissions = self.model.predict(docs) if any(len(doc) for doc in docs) else []
            fixed = self._fixed(docs)
            predictions = self._predictions(docs, emissions, fixed)
            segments = bilstm_crf_model.doc_segments(self.model, docs)
            sets = presets.segment_candidates(fixed, segments, self.tag_names, self.cfg["scheme"])
            temperature = self.cfg["temperature"]
            pieces: list[list[Piece]] = [[] for _ in docs]
            if best:
                pieces = best_analyses(
                    self.model, docs, emissions, segments, 1, unit, temperature, sets
                )
            if not marginals:
                return predictions, [Analysis(doc_pieces, None) for doc_pieces in pieces]
            posteriors = crf_ops.tagger_marginals(self.model, emissions, temperature, sets)
        empty = numpy.zeros((0, len(self.tag_names)), dtype="float32")
        per_doc = split_by(posteriors, [len(lengths) for lengths in segments])
        return predictions, [
            Analysis(doc_pieces, numpy.concatenate([empty, *doc_marginals]))
            for doc_pieces, doc_marginals in zip(pieces, per_doc)
        ]

    def _fixed(self, docs: list[Doc]) -> list[numpy.ndarray | None] | None:
        """Per doc, the tag sets its presets leave, when decoding around them (`presets.py`)."""
        if self.cfg["overwrite"] or self.cfg["presets"] != "fixed":
            return None
        return presets.docs_tag_sets(docs, self.labels, self.cfg["scheme"])

    def _predictions(
        self, docs: list[Doc], emissions: list[Floats2d], fixed: list | None = None
    ) -> Predictions:
        """Decode the emissions of `docs` (inside `torch_threads`), given the per-doc tag sets
        `fixed` when given."""
        segments = bilstm_crf_model.doc_segments(self.model, docs)
        sets = presets.segment_candidates(fixed, segments, self.tag_names, self.cfg["scheme"])
        try:
            paths, invalid = crf_ops.tagger_decode(self.model, emissions, sets)
        except crf_ops.ConstraintError as error:
            where = presets.conflict(error, docs, segments)
            message = f"[{self.name}] No analysis satisfies the constraints at {where}."
            raise ValueError(message) from None
        self.decode_stats["sequences"] += len(paths)
        self.decode_stats["invalid"] += invalid
        empty = numpy.zeros(0, dtype="int64")
        per_doc = split_by(paths, [len(lengths) for lengths in segments])
        tags = [numpy.concatenate([empty, *doc_paths]) for doc_paths in per_doc]
        probs = None
        if self.cfg["confidence"] or self.cfg["threshold"] > 0:
            probs = entity_probs(self.model, docs, emissions, segments, paths, self.cfg, sets)
        nbest = None
        if self.cfg["nbest"]:
            k, unit = self.cfg["nbest"], self.cfg["nbest_unit"]
            nbest = best_analyses(
                self.model, docs, emissions, segments, k, unit, self.cfg["temperature"], sets
            )
        return Predictions(tags, probs, nbest)

    def set_annotations(self, docs: Iterable[Doc], predictions: Predictions) -> None:
        """Write the predicted entities to `doc.ents`: around the presets (their entities and
        blocked tokens kept), or as `overwrite` and `presets` "keep" say (`presets.py`)."""
        docs = list(docs)
        labels, scheme = self.labels, self.cfg["scheme"]
        segments = bilstm_crf_model.doc_segments(self.model, docs)
        found = docs_entities(docs, predictions.tags, segments, scheme)
        for i, (doc, (entities, kept)) in enumerate(zip(docs, found)):
            spans = [
                Span(doc, int(start), int(end), label=labels[label])
                for start, end, label in zip(*entities)
            ]
            probs = None
            if predictions.probs is not None:  # as stored, so that a threshold sees the same
                probs = predictions.probs[i][kept].astype("float32")
            spans, probs = presets.write_entities(doc, spans, probs, self.cfg)
            if self.cfg["confidence"] and probs is not None:
                group = SpanGroup(doc, name=self.cfg["spans_key"], spans=spans)
                group.attrs["scores"] = numpy.asarray(probs, dtype="float32")
                doc.spans[self.cfg["spans_key"]] = group
            if predictions.nbest is not None:
                set_nbest(
                    doc,
                    predictions.nbest[i],
                    self.labels,
                    self.cfg,
                    self._segments(doc),
                )

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
        with bilstm_crf_model.torch_threads(self.model, self._threads()):
            emissions, backprop = self.model.begin_update(docs)
            loss, d_emissions = self.get_loss(examples, emissions)
            backprop(d_emissions)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        """Step the parameters, the torch ones on the component's threads (spaCy calls this
        after `update` when it steps several components together)."""
        with bilstm_crf_model.torch_threads(self.model, self._threads()):
            super().finish_update(sgd)

    def get_loss(self, examples: Iterable[Example], scores: list[Floats2d]) -> tuple[float, Any]:
        """Summed CRF negative log-likelihood over segments, and its gradient."""
        examples = list(examples)
        validate_examples(examples, "BiLSTMCRFTagger.get_loss")
        segments = bilstm_crf_model.doc_segments(self.model, [eg.predicted for eg in examples])
        scheme, gold = self.cfg["scheme"], []
        for eg, lengths in zip(examples, segments):
            pieces = restart_segments(self._gold_ids(eg), lengths, self.tag_names, scheme)
            gold += [self.model.ops.asarray1i(piece) for piece in pieces]
        loss, d_scores = crf_ops.tagger_loss(self.model, scores, gold)
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
        self.cfg["known_entities"] = training_keys(get_examples())
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
            self._load_cfg(srsly.json_loads(msg["cfg"]))
        if "vocab" not in exclude:
            self.vocab.from_bytes(msg["vocab"], exclude=exclude)
        if "model" not in exclude:
            self._build_from_cfg()
            bilstm_crf_model.load_bytes(self.model, msg["model"])
        return self

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = tuple()) -> "BiLSTMCRFTagger":
        path = util.ensure_path(path)

        def load_model(model_path: Path) -> None:
            self._build_from_cfg()
            with model_path.open("rb") as file_:
                bilstm_crf_model.load_bytes(self.model, file_.read())

        deserialize = {
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "cfg": lambda p: self._load_cfg(srsly.read_json(p)),
            "model": load_model,
        }
        util.from_disk(path, deserialize, exclude)
        return self

    def _load_cfg(self, saved: dict[str, Any]) -> None:
        """Take what the trained model is from `saved`; the settings that only act at run time
        (overwrite, presets, confidence, spans_key, threshold, threads) keep the values this
        component was made with, so that a config given at load time takes effect."""
        if saved.get("scheme", self.cfg["scheme"]) != self.cfg["scheme"]:
            raise ValueError(
                f"[{self.name}] The config sets scheme {self.cfg['scheme']!r}, but the model was "
                f"trained with {saved['scheme']!r}: the tag scheme comes from training."
            )
        for key in MODEL_SETTINGS:
            if key in saved:
                self.cfg[key] = saved[key]

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

    def _threads(self) -> int:
        """Threads for this call: the setting, or the default; one in a forked worker (as
        `nlp.pipe(n_process=...)` makes), where the others are busy with their own docs."""
        if os.getpid() != self._pid:
            return 1
        return self.cfg["threads"] or bilstm_crf_model.default_threads()

    def _gold_ids(self, example: Example) -> list[int]:
        """Gold tag ids on the predicted tokens: `-1` where annotation is missing."""
        try:
            return gold_tag_ids(example, self.labels, self.cfg["scheme"]).tolist()
        except UnknownLabelError as err:
            raise ValueError(
                f"[{self.name}] Entity label {err.label!r} in the training data is not one of "
                f"the component's labels {self.labels}: add it before initialization."
            ) from None

    def _segments(self, doc: Doc) -> list[int]:
        return bilstm_crf_model.doc_segments(self.model, [doc])[0]
