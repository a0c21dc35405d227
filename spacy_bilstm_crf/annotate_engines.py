"""The batch annotator's engines: `nlp.pipe` in this process or in worker processes, or Ray Data.

Both take the shards still to do, send only their good rows' texts through the pipeline, and
give back each shard complete and in input order: `assemble` puts every result at its row and
fills the error rows in between. Ray is imported only when the Ray engine runs, so the local
engine works without it.
"""

import functools
import multiprocessing
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import spacy
import srsly
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from .annotate_io import AnnotateError, Row, require_pyarrow

# The rows per Ray Data block: enough for several batches, few enough to stream.
_BLOCK_BATCHES = 4
# Batches in flight per local worker process.
_IN_FLIGHT = 4
# Ray's switch for its single-machine mode, in which a local cluster binds to loopback only.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class Shard(NamedTuple):
    """Input rows `[start, start + len(rows))`, written together as output shard `index`."""

    index: int
    start: int
    rows: list[Row]


class Annotated(NamedTuple):
    """A shard's output records, one per input row in order, and the words annotated."""

    shard: Shard
    records: list[dict]
    words: int


def load_pipeline(
    model: str | Path, max_chars: int | None = None, threads: int | None = None
) -> Language:
    """`spacy.load(model)`, with `nlp.max_length` raised to `max_chars` where that is more,
    and the `bilstm_crf` components on `threads` threads when given (a worker or actor that
    shares the machine with others uses one)."""
    try:
        nlp = spacy.load(model)
    except (OSError, ValueError) as error:
        raise AnnotateError(f"Cannot load the pipeline {str(model)!r}: {error}") from error
    if max_chars is not None and max_chars > nlp.max_length:
        nlp.max_length = max_chars
    if threads is not None:
        for name in nlp.pipe_names:
            if nlp.get_pipe_meta(name).factory == "bilstm_crf":
                nlp.get_pipe(name).cfg["threads"] = threads
    return nlp


def score_keys(nlp: Language) -> list[str]:
    """The `doc.spans` keys where `bilstm_crf` components with `confidence` put their scores."""
    keys = []
    for name in nlp.pipe_names:
        if nlp.get_pipe_meta(name).factory == "bilstm_crf":
            cfg = nlp.get_pipe(name).cfg
            if cfg.get("confidence"):
                keys.append(cfg["spans_key"])
    return keys


def doc_ents(doc: Doc, keys: list[str]) -> list[dict[str, Any]]:
    """`doc.ents` as records; with score `keys`, each has the score of its span (or None)."""
    scores: dict[tuple[int, int, str], float] = {}
    for key in keys:
        group = doc.spans.get(key)
        if group is None:
            continue
        for span, score in zip(group, group.attrs.get("scores", ())):
            scores.setdefault((span.start, span.end, span.label_), float(score))
    ents = []
    for ent in doc.ents:
        record: dict[str, Any] = {
            "start_char": ent.start_char,
            "end_char": ent.end_char,
            "label": ent.label_,
        }
        if keys:
            record["score"] = scores.get((ent.start, ent.end, ent.label_))
        ents.append(record)
    return ents


def assemble(
    waiting: deque[Shard], results: Iterable[tuple[list[dict], int]]
) -> Iterator[Annotated]:
    """Complete shards in order from `results`, one `(ents, words)` per good row in input order.

    `waiting` holds the shards whose texts went into the pipeline and are not complete yet,
    oldest first; the engine may append to it while `results` is being read.
    """
    records: list[dict] = []
    words = 0

    def ready() -> Iterator[Annotated]:
        """Finish the oldest shards that need no more results; stop at one that does."""
        nonlocal records, words
        while waiting:
            rows = waiting[0].rows
            while len(records) < len(rows) and rows[len(records)].error is not None:
                row = rows[len(records)]
                records.append({"id": row.id, "ents": [], "error": row.error})
            if len(records) < len(rows):
                return
            yield Annotated(waiting.popleft(), records, words)
            records, words = [], 0

    for ents, count in results:
        yield from ready()
        if not waiting:
            raise RuntimeError("The pipeline returned more docs than it was given texts.")
        row = waiting[0].rows[len(records)]
        records.append({"id": row.id, "ents": ents, "error": None})
        words += count
        yield from ready()
    yield from ready()
    if waiting:
        raise RuntimeError("The pipeline returned fewer docs than it was given texts.")


def local_engine(
    nlp: Language,
    shards: Iterable[Shard],
    *,
    model: str,
    max_chars: int,
    batch_size: int,
    workers: int,
) -> Iterator[Annotated]:
    """`nlp.pipe` over every shard's good texts: in this process for one worker, else in
    `workers` processes that each load `model` once and send back only the entities.

    Not `nlp.pipe(n_process=...)`: that sends every Doc back as bytes, and this process then
    spends milliseconds per Doc in `Doc.from_bytes` (srsly looks its msgpack hooks up in
    spaCy's whole registry for each call), which caps it at a few hundred docs/s.
    """
    waiting: deque[Shard] = deque()

    def texts() -> Iterator[str]:
        for shard in shards:
            waiting.append(shard)
            for row in shard.rows:
                if row.error is None:
                    yield row.text

    if workers == 1:
        keys = score_keys(nlp)
        docs = nlp.pipe(texts(), batch_size=batch_size)
        results: Iterable[tuple[list[dict], int]] = (
            (doc_ents(doc, keys), len(doc)) for doc in docs
        )
    else:
        results = _pool_results(texts(), model, max_chars, batch_size, workers)
    yield from assemble(waiting, results)


def _pool_results(
    texts: Iterator[str], model: str, max_chars: int, batch_size: int, workers: int
) -> Iterator[tuple[list[dict], int]]:
    """`(ents, words)` per text, in order, from spawned worker processes; a few batches per
    worker in flight, so that the input is read as fast as it is annotated, no faster."""
    context = multiprocessing.get_context("spawn")
    in_flight: deque[Future] = deque()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for batch in minibatch(texts, size=batch_size):
            in_flight.append(pool.submit(_annotate_batch, batch, model, max_chars, batch_size))
            if len(in_flight) >= workers * _IN_FLIGHT:
                yield from in_flight.popleft().result()
        while in_flight:
            yield from in_flight.popleft().result()


@functools.cache
def _worker_pipeline(model: str, max_chars: int) -> Language:
    """A worker process's pipeline, loaded once, on its first batch, with one torch thread
    (as Ray gives each actor one CPU): more threads than cores only wait for each other."""
    torch.set_num_threads(1)
    return load_pipeline(model, max_chars, threads=1)


def _annotate_batch(
    texts: list[str], model: str, max_chars: int, batch_size: int
) -> list[tuple[list[dict], int]]:
    """In a worker: the entity records and word count of each text."""
    nlp = _worker_pipeline(model, max_chars)
    keys = score_keys(nlp)
    return [(doc_ents(doc, keys), len(doc)) for doc in nlp.pipe(texts, batch_size=batch_size)]


def require_ray() -> Any:
    """The ray module with Ray Data, or an error naming the extra that installs them.

    Without RAY_ADDRESS, Ray is first imported in its single-machine mode (the default on macOS
    and Windows), so that the cluster `ray.init()` starts listens on 127.0.0.1 only; Ray reads
    the setting when it is imported, so a process that imported Ray before keeps its own.
    """
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(_LOOPBACK_ENV, "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise AnnotateError(
            "The Ray engine needs Ray Data, which is not installed: "
            'pip install "spacy-bilstm-crf[ray]"'
        ) from error
    require_pyarrow("The Ray engine")
    return ray


class RayAnnotator:
    """A Ray Data actor: loads the pipeline once, in `__init__`, then annotates batches."""

    def __init__(self, model: str, max_chars: int, batch_size: int, use_gpu: bool) -> None:
        if use_gpu:
            spacy.require_gpu()
        self.nlp = load_pipeline(model, max_chars, threads=1)
        self.keys = score_keys(self.nlp)
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> Any:
        """A pyarrow table of `row`, `text` to one of `row`, `ents` (as JSON), `words`."""
        import pyarrow

        ents, words = [], []
        texts = batch.column("text").to_pylist()
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            ents.append(srsly.json_dumps(doc_ents(doc, self.keys)))
            words.append(len(doc))
        return pyarrow.table({"row": batch.column("row"), "ents": ents, "words": words})


def ray_engine(
    model: str,
    shards: Iterable[Shard],
    *,
    batch_size: int,
    workers: int,
    max_chars: int,
    gpus_per_actor: float = 0.0,
) -> Iterator[Annotated]:
    """Ray Data over every shard's good texts: `workers` actors for the whole job, order kept.

    The driver reads the input, sends the texts to the object store and writes the shards as
    the results stream back; the actors load the pipeline from `model` (a folder that exists
    at the same path on every node, or an installed package).
    """
    ray = require_ray()
    import pyarrow

    waiting: deque[Shard] = deque()
    rows, texts = [], []
    for shard in shards:
        for position, row in enumerate(shard.rows):
            if row.error is None:
                rows.append(shard.start + position)
                texts.append(row.text)
        # The texts go to Ray; the driver keeps only the ids and errors.
        waiting.append(shard._replace(rows=[row._replace(text=None) for row in shard.rows]))
    if not texts:
        yield from assemble(waiting, ())
        return
    started = _connect(ray, workers, gpus_per_actor)
    options = ray.data.DataContext.get_current().execution_options
    saved = options.preserve_order
    options.preserve_order = True
    try:
        table = pyarrow.table({"row": pyarrow.array(rows, pyarrow.int64()), "text": texts})
        del texts
        # Blocks of a few batches, and a few blocks per actor even for small inputs.
        per_actor = -(-len(rows) // (workers * _BLOCK_BATCHES))
        block = max(1, min(batch_size * _BLOCK_BATCHES, per_actor))
        blocks = [table.slice(offset, block) for offset in range(0, len(rows), block)]
        dataset = ray.data.from_arrow(blocks).map_batches(
            RayAnnotator,
            fn_constructor_kwargs={
                "model": model,
                "max_chars": max_chars,
                "batch_size": batch_size,
                "use_gpu": gpus_per_actor > 0,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=gpus_per_actor or None,
        )
        yield from assemble(waiting, _in_order(dataset, rows))
    finally:
        options.preserve_order = saved
        if started:
            ray.shutdown()


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray cluster on loopback, without the dashboard (all cores by default)."""
    ray = require_ray()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning")


def _join_cluster(ray: Any, address: str) -> None:
    """Connect to the cluster at `address`, with a hint when that fails."""
    try:
        ray.init(address=address, logging_level="warning")
    except ConnectionError as error:
        hint = ""
        if not os.environ.get("RAY_AUTH_MODE"):
            hint = (
                " A cluster started by `ray start --head` checks a token (in ~/.ray/auth_token"
                " on the head node): set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN or"
                " RAY_AUTH_TOKEN_PATH on another machine."
            )
        raise AnnotateError(
            f"Cannot connect to the Ray cluster at RAY_ADDRESS={address}: {error}.{hint}"
        ) from error


def _in_order(dataset: Any, rows: list[int]) -> Iterator[tuple[list[dict], int]]:
    """The dataset's `(ents, words)` per row, checked to come back in the order sent."""
    position = 0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        got = batch.column("row").to_pylist()
        if got != rows[position : position + len(got)]:
            raise RuntimeError("Ray Data returned rows out of order; preserve_order was lost.")
        position += len(got)
        for ents, words in zip(batch.column("ents").to_pylist(), batch.column("words")):
            yield srsly.json_loads(ents), words.as_py()


def _connect(ray: Any, workers: int, gpus_per_actor: float) -> bool:
    """Join the cluster at RAY_ADDRESS, or start a local one on loopback; True if this call
    started Ray (and so should shut it down). Too few CPUs or GPUs for the actors is an error
    on a local cluster, and a warning on another (it may scale up)."""
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            _join_cluster(ray, os.environ["RAY_ADDRESS"])
        else:
            init_local_ray()
        started = True
    resources = ray.cluster_resources()
    needs = {"CPU": float(workers), "GPU": workers * gpus_per_actor}
    for name, needed in needs.items():
        if needed > resources.get(name, 0.0):
            message = (
                f"{workers} Ray actors need {needed:g} {name}s, but the cluster has "
                f"{resources.get(name, 0.0):g}: lower --workers."
            )
            if not os.environ.get("RAY_ADDRESS"):
                if started:
                    ray.shutdown()
                raise AnnotateError(message)
            warnings.warn(message, stacklevel=2)
    return started
