"""The batch annotator: a dataset of texts through a pipeline, in resumable shards.

`run.py` (`annotate()`, the run and its summary), `rows.py` (input rows, checked first),
`shards.py` (output shards and the manifest), `records.py` (what the engines share),
`local.py` (this process or worker processes), `ray_engine.py` (Ray Data actors).
"""

from .rows import AnnotateError
from .run import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    ENGINES,
    Interrupted,
    ShardReport,
    Summary,
    annotate,
)
from .shards import FORMATS

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SHARD_SIZE",
    "ENGINES",
    "FORMATS",
    "AnnotateError",
    "Interrupted",
    "ShardReport",
    "Summary",
    "annotate",
]
