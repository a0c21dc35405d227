"""The `bilstm_crf` pipeline component: a trainable BiLSTM-CRF entity tagger writing `doc.ents`."""

import os
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy
import srsly
from spacy import util
from spacy.attrs import IS_SPACE
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate
from thinc.types import Floats2d

from . import model as bilstm_crf_model
from .gold import UnknownLabelError, gold_tag_ids
from .known_entities import are_known, training_keys
from .parallel import default_threads
from .segments import split_by
from .spans import (
    Entities,
    doc_entities,
    docs_entities,
    read_entities,
    read_sequences,
    set_entities,
    trim_spaces,
)
from .tags import SCHEMES, restart_tags, tag_names

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


@Language.factory(
    "bilstm_crf",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    default_config={
        "model": DEFAULT_MODEL,
        "overwrite": False,
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
    confidence: bool,
    spans_key: str,
    threshold: float,
    nbest: int,
    nbest_unit: str,
    scheme: str,
    threads: int,
    scorer: Callable | None,
) -> "BiLSTMCRFTagger":
    """A BiLSTM-CRF entity tagger.

    `overwrite`: replace entities set by earlier components (else keep them and add only
    non-overlapping ones). `confidence`: also store each predicted entity in
    `doc.spans[spans_key]` with its CRF probability in `attrs["scores"]`. `threshold`: keep
    only entities whose probability reaches it (0 keeps all). `nbest`: also write the `nbest`
    most probable analyses of each doc as span groups `doc.spans[f"{spans_key}_nbest_{rank}"]`
    (rank 1 is the best), with the analysis's probability in `attrs["probability"]`
    (0 turns them off); with `nbest_unit = "sentence"`, the `nbest` most probable analyses
    of each sentence instead, rank by rank, their probabilities (under the whole doc's CRF)
    in `attrs["probabilities"]`, aligned with the sentences' token offsets in
    `attrs["pieces"]`. `scheme`: the tags the model
    predicts, "BILUO" (as spaCy's `ner`) or "BIO"; `doc.ents` are the same kind either way.
    `threads`: CPU threads for the component's torch work (0: up to 2, as the process may use).
    """
    return BiLSTMCRFTagger(
        nlp.vocab,
        model,
        name,
        overwrite=overwrite,
        confidence=confidence,
        spans_key=spans_key,
        threshold=threshold,
        nbest=nbest,
        nbest_unit=nbest_unit,
        scheme=scheme,
        threads=threads,
        scorer=scorer,
    )


class Piece(NamedTuple):
    """Tokens `start..end-1` of a doc (all of it, or a sentence) and their best analyses: tag
    ids and log probability, best first."""

    start: int
    end: int
    analyses: list[tuple[numpy.ndarray, float]]


class Predictions(NamedTuple):
    """What `predict` returns: tag ids per doc, entity probabilities and the n best analyses
    of each doc's pieces when asked for."""

    tags: list[numpy.ndarray]
    probs: list[numpy.ndarray] | None
    nbest: list[list[Piece]] | None = None


class Analysis(NamedTuple):
    """A doc's pieces (the doc, or its sentences) with their best analysis and its log
    probability, and each token's tag posteriors `(len(doc), K)`."""

    pieces: list[Piece]
    marginals: numpy.ndarray


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
        threshold: float = 0.0,
        nbest: int = 0,
        nbest_unit: str = "doc",
        scheme: str = "BILUO",
        threads: int = 0,
        scorer: Callable | None = get_ner_prf,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"[{name}] scheme must be one of {SCHEMES}, got {scheme!r}.")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"[{name}] threshold must be in [0, 1], got {threshold}.")
        if nbest < 0:
            raise ValueError(f"[{name}] nbest must be 0 (off) or positive, got {nbest}.")
        if nbest_unit not in ("doc", "sentence"):
            raise ValueError(
                f"[{name}] nbest_unit must be 'doc' or 'sentence', got {nbest_unit!r}."
            )
        if threads < 0:
            raise ValueError(f"[{name}] threads must be 0 (automatic) or positive, got {threads}.")
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
            return self._predictions(docs, emissions)

    def analyze(self, docs: Iterable[Doc], unit: str = "doc") -> tuple[Predictions, list[Analysis]]:
        """`predict`'s output and, per doc, what choosing texts to annotate needs: the best
        analysis of each piece (the doc, or each sentence: `unit`) with its log probability,
        and each token's tag posteriors, all at the calibrated `temperature`."""
        if unit not in ("doc", "sentence"):
            raise ValueError(f"[{self.name}] unit must be 'doc' or 'sentence', got {unit!r}.")
        docs = list(docs)
        self._require_built()
        with bilstm_crf_model.torch_threads(self.model, self._threads()):
            emissions = self.model.predict(docs) if any(len(doc) for doc in docs) else []
            predictions = self._predictions(docs, emissions)
            segments = bilstm_crf_model.doc_segments(self.model, docs)
            pieces = self._best_analyses(docs, emissions, segments, 1, unit)
            temperature = self.cfg["temperature"]
            marginals = bilstm_crf_model.tagger_marginals(self.model, emissions, temperature)
        empty = numpy.zeros((0, len(self.tag_names)), dtype="float32")
        per_doc = split_by(marginals, [len(lengths) for lengths in segments])
        return predictions, [
            Analysis(doc_pieces, numpy.concatenate([empty, *doc_marginals]))
            for doc_pieces, doc_marginals in zip(pieces, per_doc)
        ]

    def _predictions(self, docs: list[Doc], emissions: list[Floats2d]) -> Predictions:
        """Decode the emissions of `docs` (inside `torch_threads`)."""
        segments = bilstm_crf_model.doc_segments(self.model, docs)
        paths, invalid = bilstm_crf_model.tagger_decode(self.model, emissions)
        self.decode_stats["sequences"] += len(paths)
        self.decode_stats["invalid"] += invalid
        empty = numpy.zeros(0, dtype="int64")
        per_doc = split_by(paths, [len(lengths) for lengths in segments])
        tags = [numpy.concatenate([empty, *doc_paths]) for doc_paths in per_doc]
        probs = None
        if self.cfg["confidence"] or self.cfg["threshold"] > 0:
            probs = self._span_probs(docs, emissions, segments, paths)
        nbest = None
        if self.cfg["nbest"]:
            k, unit = self.cfg["nbest"], self.cfg["nbest_unit"]
            nbest = self._best_analyses(docs, emissions, segments, k, unit)
        return Predictions(tags, probs, nbest)

    def set_annotations(self, docs: Iterable[Doc], predictions: Predictions) -> None:
        """Write the predicted entities to `doc.ents`, keeping earlier ones unless overwriting."""
        docs = list(docs)
        labels, scheme = self.labels, self.cfg["scheme"]
        threshold = self.cfg["threshold"]
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
            chosen = spans
            if threshold > 0 and probs is not None:
                chosen = [span for span, prob in zip(spans, probs) if prob >= threshold]
            set_entities(doc, chosen, self.cfg["overwrite"])
            if self.cfg["confidence"] and probs is not None:
                group = SpanGroup(doc, name=self.cfg["spans_key"], spans=spans)
                group.attrs["scores"] = numpy.asarray(probs, dtype="float32")
                doc.spans[self.cfg["spans_key"]] = group
            if predictions.nbest is not None:
                self._set_nbest(doc, predictions.nbest[i])

    def _set_nbest(self, doc: Doc, pieces: list[Piece]) -> None:
        """Write the analyses of rank r of every piece as the span group
        `{spans_key}_nbest_{r}`, with their probabilities."""
        key, labels, scheme = self.cfg["spans_key"], self.labels, self.cfg["scheme"]
        is_space = doc.to_array(IS_SPACE).astype(bool)
        ranks = max((len(piece.analyses) for piece in pieces), default=0)
        for rank in range(1, ranks + 1):
            spans, probabilities = [], []
            for piece in pieces:
                if len(piece.analyses) < rank:
                    probabilities.append(0.0)
                    continue
                ids, log_prob = piece.analyses[rank - 1]
                probabilities.append(float(numpy.exp(log_prob)))
                if self.cfg["nbest_unit"] == "doc":
                    entities, _ = doc_entities(doc, ids, self._segments(doc), scheme)
                else:  # one sentence, inside one segment
                    found = read_entities(ids, scheme)
                    shift = piece.start
                    moved = Entities(found.starts + shift, found.ends + shift, found.labels)
                    entities, _ = trim_spaces(moved, is_space)
                spans += [
                    Span(doc, int(start), int(end), label=labels[label])
                    for start, end, label in zip(*entities)
                ]
            group = SpanGroup(doc, name=f"{key}_nbest_{rank}", spans=spans)
            group.attrs["rank"] = rank
            group.attrs["pieces"] = [[piece.start, piece.end] for piece in pieces]
            group.attrs["probabilities"] = probabilities
            if len(pieces) == 1:
                group.attrs["probability"] = probabilities[0]
            doc.spans[group.name] = group

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
        first, last = restart_tags(self.tag_names, self.cfg["scheme"])
        gold = []
        for eg, lengths in zip(examples, segments):
            for piece in split_by(self._gold_ids(eg), lengths):
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
        (overwrite, confidence, spans_key, threshold, threads) keep the values this component
        was made with, so that a config given at load time takes effect."""
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
        return self.cfg["threads"] or default_threads()

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

    def _best_analyses(
        self,
        docs: list[Doc],
        emissions: list[Floats2d],
        segments: list[list[int]],
        k: int,
        unit: str,
    ) -> list[list[Piece]]:
        """Per doc, its pieces with their `k` best analyses: the whole doc (its segments'
        analyses combined; `unit` "doc"), or each sentence within its segment."""
        temperature = self.cfg["temperature"]
        if unit == "doc":
            per_segment = bilstm_crf_model.tagger_nbest(self.model, emissions, k, temperature)
            per_doc = split_by(per_segment, [len(lengths) for lengths in segments])
            return [
                [Piece(0, len(doc), _best_combinations(lists, k))]
                for doc, lists in zip(docs, per_doc)
            ]
        rows, starts, ends, owners = [], [], [], []
        segment = 0
        for doc_index, (doc, lengths) in enumerate(zip(docs, segments)):
            offset = 0
            sentences = (
                [(s.start, s.end) for s in doc.sents]
                if doc.has_annotation("SENT_START")
                else [(0, len(doc))]
            )
            for length in lengths:
                for begin, finish in sentences:
                    begin, finish = max(begin, offset), min(finish, offset + length)
                    if begin < finish:
                        rows.append(segment)
                        starts.append(begin - offset)
                        ends.append(finish - offset)
                        owners.append((doc_index, offset))
                offset += length
                segment += 1
        analyses = bilstm_crf_model.tagger_piece_nbest(
            self.model,
            emissions,
            numpy.asarray(rows),
            numpy.asarray(starts),
            numpy.asarray(ends),
            k,
            temperature,
        )
        pieces: list[list[Piece]] = [[] for _ in docs]
        for (doc_index, offset), begin, finish, found in zip(owners, starts, ends, analyses):
            pieces[doc_index].append(Piece(offset + begin, offset + finish, found))
        return pieces

    def _span_probs(
        self,
        docs: list[Doc],
        emissions: list[Floats2d],
        segments: list[list[int]],
        paths: list[numpy.ndarray],
    ) -> list[numpy.ndarray]:
        """Per doc, the CRF probability of each predicted entity, in the order the entities
        are read from the tags (before whitespace trimming), at the entity's temperature."""
        scheme = self.cfg["scheme"]
        sizes = numpy.asarray([len(path) for path in paths], dtype="int64")
        found = read_sequences(numpy.concatenate([numpy.zeros(0, "int64"), *paths]), sizes, scheme)
        first = numpy.cumsum(sizes) - sizes  # each segment's offset in the flat tags
        rows = numpy.searchsorted(first, found.starts, side="right") - 1
        starts, ends, labels = found.starts - first[rows], found.ends - first[rows], found.labels
        tags, after = _span_tags(labels, ends - starts, scheme)
        docs_of_rows = numpy.repeat(numpy.arange(len(segments)), [len(s) for s in segments])
        owners = docs_of_rows[rows]
        seen_t, unseen_t = self.cfg["seen_temperature"], self.cfg["unseen_temperature"]
        if seen_t is None or unseen_t is None:
            probs = bilstm_crf_model.crf_span_probs(
                self.model, emissions, rows, starts, tags, after, self.cfg["temperature"]
            )
        else:
            sizes = [numpy.asarray(lengths, dtype="int64") for lengths in segments]
            offsets = numpy.concatenate(
                [numpy.zeros(0, dtype="int64")]
                + [numpy.cumsum(lengths) - lengths for lengths in sizes]
            )[rows]  # each entity's segment start in its doc
            texts = (
                docs[owner][offset + start : offset + end].text
                for owner, offset, start, end in zip(owners, offsets, starts, ends)
            )
            known = are_known(texts, self.cfg["known_entities"])
            probs = numpy.zeros(len(rows), dtype="float64")
            for group, temperature in ((known, seen_t), (~known, unseen_t)):
                if group.any():  # one forward-backward pass per temperature in use
                    probs[group] = bilstm_crf_model.crf_span_probs(
                        self.model,
                        emissions,
                        rows[group],
                        starts[group],
                        tags[group],
                        after[group],
                        temperature,
                    )
        return [probs[owners == i] for i in range(len(segments))]


def _best_combinations(
    lists: list[list[tuple[numpy.ndarray, float]]], k: int
) -> list[tuple[numpy.ndarray, float]]:
    """The `k` best concatenations of one path from each list (a doc's segments), by summed
    log probability, best first. A doc without segments has one, empty, analysis."""
    best: list[tuple[list[numpy.ndarray], float]] = [([], 0.0)]
    for options in lists:
        pairs = [
            (paths + [path], score + log_prob)
            for paths, score in best
            for path, log_prob in options
        ]
        best = sorted(pairs, key=lambda pair: -pair[1])[:k]
    empty = numpy.zeros(0, dtype="int64")
    return [(numpy.concatenate([empty, *paths]), score) for paths, score in best]


def _span_tags(
    labels: numpy.ndarray, lengths: numpy.ndarray, scheme: str
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Tag ids `(E, L)` of entities with these label indices and lengths (padded with -1),
    and the id that would continue each (BIO: B I...; BILUO: U alone, or B I... L)."""
    width = 2 if scheme == "BIO" else 4
    base = (1 + labels * width)[:, None]  # shape: (E, 1)
    position = numpy.arange(max(int(lengths.max(initial=0)), 1))[None, :]  # shape: (1, L)
    size = lengths[:, None]
    prefix = numpy.where(position == 0, 0, 1)  # B, then I
    if width == 4:
        prefix = numpy.where((position == size - 1) & (size > 1), 2, prefix)  # L
        prefix = numpy.where(size == 1, 3, prefix)  # U
    tags = numpy.where(position < size, base + prefix, -1)
    return tags, base[:, 0] + 1
