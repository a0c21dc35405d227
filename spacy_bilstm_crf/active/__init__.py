"""The annotation loop: what a person should label next, and their answers back.

`uncertainty.py` (how informative each text, sentence or span is, from the CRF's
posteriors), `select.py` (the best units of a pool within a budget, as tasks), `tasks.py`,
`formats.py` (Prodigy, Label Studio, doccano and JSONL, both ways), `ingest.py` (answers
into docs with partial labels for `spacy train`).
"""

from .formats import FORMATS, FormatError, read_answers, write_tasks
from .ingest import ingest
from .select import select
from .tasks import Task

__all__ = ["FORMATS", "FormatError", "Task", "ingest", "read_answers", "select", "write_tasks"]
