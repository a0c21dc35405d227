"""The batch annotator's Ray engine: Ray Data actors, each loading the pipeline once.

Ray is imported only when this engine runs, so the local engine works without it.
"""

import inspect
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import spacy
import srsly

from .records import Annotated, Shard, assemble, doc_ents, load_pipeline, score_keys
from .rows import AnnotateError, require_pyarrow

# The rows per Ray Data block: enough for several batches, few enough to stream.
_BLOCK_BATCHES = 4
# Ray's switch for its single-machine mode, in which a local cluster binds to loopback only.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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

    def __init__(
        self,
        model: str,
        max_chars: int,
        batch_size: int,
        use_gpu: bool,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if use_gpu:
            spacy.require_gpu()
        self.nlp = load_pipeline(model, max_chars, threads=1, settings=settings)
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
    settings: dict[str, Any] | None = None,
) -> Iterator[Annotated]:
    """Ray Data over every shard's good texts: `workers` actors for the whole job, order kept.

    The driver reads the input, sends the texts to the object store and writes the shards as
    the results stream back; the actors load the pipeline from `model` (a folder that exists
    at the same path on every node, or an installed package), with `settings` set on its
    `bilstm_crf` components.

    The actors are not restarted when they die (`max_restarts=0`): the job stops with an
    error and a rerun resumes from the complete shards. Ray Data's default, endless
    restarts, would retry a batch that kills its actor forever, and makes Ray core log an
    error-level line in every run ("constructor arguments in the object store and
    max_restarts > 0", ray-project/ray#57733), about Ray Data's own arguments.
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
        dataset = _map_batches(
            ray.data.from_arrow(blocks),
            RayAnnotator,
            fn_constructor_kwargs={
                "model": model,
                "max_chars": max_chars,
                "batch_size": batch_size,
                "use_gpu": gpus_per_actor > 0,
                "settings": settings,
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


def _map_batches(dataset: Any, fn: type, **options: Any) -> Any:
    """`dataset.map_batches(fn, **options)` with actors that are not restarted.

    Ray Data names no parameter for `max_restarts`: it goes with the remote arguments that
    `map_batches` takes as keywords, a way it deprecates (for Ray 2.64) without another yet.
    So it is passed while `map_batches` takes keywords, with that deprecation silenced here
    alone, and left out once it does not.
    """
    takes_keywords = any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        for parameter in inspect.signature(dataset.map_batches).parameters.values()
    )
    if not takes_keywords:
        return dataset.map_batches(fn, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(fn, max_restarts=0, **options)


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
