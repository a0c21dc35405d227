"""What Label Studio sends a machine-learning backend, checked, and what it reads back.

Label Studio 1.23.2 (`ml/api_connector.py`, `ml/models.py`, `webhooks/`) calls:

- `POST /setup` `{"project": "ID.TIMESTAMP", "schema": LABEL_CONFIG, "extra_params": ...}`
  before every batch of predictions; it keeps the answer's `model_version`.
- `POST /predict` `{"tasks": [TASK, ...], "project": "ID.TIMESTAMP", "label_config": XML,
  "params": {"context": CONTEXT}}`; the answer is `{"results": [PREDICTION, ...]}`, one per
  task, each `{"result": [REGION, ...], "score": S, "model_version": V}`. In interactive
  mode CONTEXT is `{"result": [REGION, ...]}`: the regions the annotator just drew.
- `POST /webhook` `{"action": ACTION, "project": {...}, ...}` for every project event:
  `ANNOTATION_CREATED` and `ANNOTATION_UPDATED` carry `annotation` and `task`,
  `ANNOTATIONS_CREATED` lists of both, `ANNOTATIONS_DELETED` the deleted ids, and
  `START_TRAINING` nothing more; it waits 1 s (`WEBHOOK_TIMEOUT`) for the answer.
- `POST /train` (the "Start training" button while the webhook flag is off): every
  annotated task with its annotations.

A payload that cannot be used is a `ProtocolError` naming what is wrong and the HTTP status
to answer with; this module knows no HTTP and no model.
"""

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..active.label_config import LabelConfig, LabelConfigError, parse_label_config

ANSWER_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_ACTIONS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")  # Label Studio's; the SDK's


class ProtocolError(ValueError):
    """A request that cannot be answered as it is: `status` is the HTTP status to send."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Region:
    """An entity region in characters of a task's text (end exclusive). `raw`: the region as
    Label Studio sent it, when it came from a person."""

    start: int
    end: int
    label: str
    raw: dict[str, Any] | None = None


@dataclass
class Fixes:
    """What an annotator fixed in interactive mode: their entity regions, and regions they
    said hold no entity (`outside`: this package's addition to the context, for clients that
    know which predicted regions a person removed)."""

    regions: list[Region] = field(default_factory=list)
    outside: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.regions or self.outside)


@dataclass
class AnswerEvent:
    """One annotation as a webhook reports it: enough to train on and to replace or delete."""

    project: str
    task: Any
    annotation: Any
    text: str
    review: tuple[int, int] | None
    regions: list[dict[str, Any]]
    cancelled: bool
    updated_at: str


def need_object(body: Any, what: str = "the request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(body).__name__}", 400)
    return body


def project_id(value: Any) -> str:
    """The project's id from Label Studio's `"ID.TIMESTAMP"` or a webhook's project object."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ProtocolError(f"no project id in {value!r}")
    return str(value).split(".", 1)[0]


@functools.lru_cache(maxsize=64)
def read_config(xml: str) -> LabelConfig:
    """The labeling config's NER part, parsed once per distinct config."""
    try:
        return parse_label_config(xml, "the project's labeling config")
    except LabelConfigError as error:
        raise ProtocolError(str(error)) from None


def config_of(value: Any) -> LabelConfig | None:
    """A payload's labeling config (None when absent): must be XML text when given."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"the labeling config must be a string, got {type(value).__name__}")
    return read_config(value)


def tasks_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise ProtocolError("'tasks' must be a list of task objects")
    return tasks


def task_text(task: dict[str, Any], config: LabelConfig, where: str = "") -> str:
    """The text to label: `data[FIELD]` for the field the config's `Text` tag names."""
    data = task.get("data")
    where = where or f"task {task.get('id', '?')}"
    if not isinstance(data, dict):
        raise ProtocolError(f"{where} has no 'data' object")
    text = data.get(config.text_field)
    if not isinstance(text, str):
        fields = sorted(key for key, value in data.items() if isinstance(value, str))
        raise ProtocolError(
            f"{where} has no text in the field {config.text_field!r} that the labeling config "
            f"names (its text fields: {fields})"
        )
    return text


def context_fixes(context: Any, config: LabelConfig, text: str) -> Fixes:
    """The annotator's regions in an interactive request's context (ours: `from_name`,
    `labels`), and any `outside` regions; an error names a region that does not fit."""
    if not context:
        return Fixes()
    if not isinstance(context, dict):
        raise ProtocolError("'params.context' must be an object")
    results = context.get("result") or []
    outside = context.get("outside") or []
    if not isinstance(results, list) or not isinstance(outside, list):
        raise ProtocolError("'context.result' and 'context.outside' must be lists")
    fixes = Fixes()
    for number, item in enumerate(results, start=1):
        if not isinstance(item, dict) or item.get("type") != "labels":
            continue
        if item.get("from_name", config.from_name) != config.from_name:
            continue
        value = item.get("value") or {}
        labels = value.get("labels") if isinstance(value, dict) else None
        if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
            raise ProtocolError(f"context region {number} needs exactly one label, got {labels!r}")
        start, end = _offsets(value, text, f"context region {number}")
        fixes.regions.append(Region(start, end, labels[0], item))
    for number, item in enumerate(outside, start=1):
        value = item if isinstance(item, dict) else {}
        fixes.outside.append(_offsets(value, text, f"context outside region {number}"))
    return fixes


def _offsets(value: dict[str, Any], text: str, where: str) -> tuple[int, int]:
    start, end = value.get("start"), value.get("end")
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
    if not numbers or not 0 <= start < end <= len(text):
        raise ProtocolError(
            f"{where}: start {start!r} and end {end!r} must be character offsets inside the "
            f"text ({len(text)} characters), start before end"
        )
    return start, end


def region_id(start: int, end: int, label: str) -> str:
    """The same id for the same region, so that a re-decoded region the editor already shows
    replaces itself instead of appearing twice."""
    return hashlib.blake2s(f"{start}:{end}:{label}".encode(), digest_size=5).hexdigest()


def region_record(
    config: LabelConfig, text: str, start: int, end: int, label: str, score: float
) -> dict[str, Any]:
    """A `labels` region as Label Studio reads it, with the model's probability."""
    return {
        "id": region_id(start, end, label),
        "from_name": config.from_name,
        "to_name": config.to_name,
        "type": "labels",
        "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
        "score": round(float(score), 6),
    }


def answer_events(action: str, body: dict[str, Any], config: LabelConfig) -> Iterator[AnswerEvent]:
    """The annotations of an `ANNOTATION(S)_CREATED`/`ANNOTATION_UPDATED` webhook, each
    with its task's text (an error if a task lacks the config's text field)."""
    project = project_id(body.get("project"))
    annotations, tasks = body.get("annotation"), body.get("task")
    if action == "ANNOTATIONS_CREATED":
        if not isinstance(annotations, list) or not isinstance(tasks, list):
            raise ProtocolError(f"{action} needs lists 'annotation' and 'task'")
        by_id = {task.get("id"): task for task in tasks if isinstance(task, dict)}
        pairs = [(a, by_id.get(a.get("task"))) for a in annotations if isinstance(a, dict)]
    else:
        pairs = [(need_object(annotations, "'annotation'"), tasks)]
    for annotation, task in pairs:
        where = f"annotation {annotation.get('id', '?')}"
        if not isinstance(task, dict):
            raise ProtocolError(f"{where}: no task object with its data")
        text = task_text(task, config, f"{where}'s task {task.get('id', '?')}")
        result = annotation.get("result") or []
        if not isinstance(result, list):
            raise ProtocolError(f"{where}: 'result' must be a list")
        regions = [
            item
            for item in result
            if isinstance(item, dict)
            and item.get("type") == "labels"
            and item.get("to_name", config.to_name) == config.to_name
        ]
        data = task.get("data") or {}
        review = None
        if isinstance(data.get("review_start"), int) and isinstance(data.get("review_end"), int):
            review = (data["review_start"], data["review_end"])
        yield AnswerEvent(
            project=project,
            task=task.get("id", annotation.get("task")),
            annotation=annotation.get("id"),
            text=text,
            review=review,
            regions=[item.get("value") or {} for item in regions],
            cancelled=bool(annotation.get("was_cancelled")),
            updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        )


def deleted_ids(body: dict[str, Any]) -> list[Any]:
    """The annotation ids of a delete webhook (`annotations`: `[{"id": N}, ...]`)."""
    found = body.get("annotations", body.get("annotation"))
    items = found if isinstance(found, list) else [found]
    ids = [item.get("id") for item in items if isinstance(item, dict) and "id" in item]
    if not ids:
        raise ProtocolError("a delete event needs 'annotations': [{'id': ...}, ...]")
    return ids


def train_events(body: dict[str, Any], config: LabelConfig) -> Iterator[AnswerEvent]:
    """The answers of a `/train` request: each annotated task's annotations."""
    tasks = body.get("annotations")
    if not isinstance(tasks, list):
        raise ProtocolError("'/train' needs 'annotations': the annotated tasks")
    project = body.get("project")
    for task in tasks:
        if not isinstance(task, dict):
            raise ProtocolError("each of '/train''s tasks must be an object")
        for annotation in task.get("annotations") or []:
            if isinstance(annotation, dict):
                single = {"project": project, "annotation": annotation, "task": task}
                yield from answer_events("ANNOTATION_UPDATED", single, config)
