"""Label Studio both ways: tasks with the model's predictions, and the exports read back.

Tasks (one JSON list, which Label Studio's importer reads): `data` holds the text under the
labeling config's field, the region to review and the task's id and scores; one prediction
whose `result` items are `labels` regions with the config's `from_name` and `to_name`, each
with a `score`, and whose `score` is the model's confidence, so that the data manager's
prediction score, lowest first, shows the least certain first.

Exports, both of the dialog's JSON formats:
- JSON: a list of tasks, each with `data` and `annotations` (`result`, `was_cancelled`,
  timestamps). The latest annotation not cancelled is the answer; a task with none is
  skipped.
- JSON_MIN: flat rows, the task's data fields beside `id` (the task), `annotation_id`,
  `created_at`, `updated_at` and one key per control tag (the `Labels` tag's name) holding its
  regions; no key where the result was empty, no cancelled annotations, one row per
  annotation.

Regions are read whatever the tag names are: every result of type `labels`; the text is the
config's field when a config is given, else the results' `to_name`, `text`, or the one field
whose text agrees with every region's.
"""

from collections.abc import Iterator
from typing import Any

from .answers import Answer, FormatError, Skipped, Slip, checked_answer, offsets, review_region
from .label_config import LabelConfig
from .tasks import Task

# Fields of a JSON_MIN row that Label Studio adds beside the task's data, and fields of the
# data that `select` adds beside the text: neither is the text.
MIN_FIELDS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time")
OWN_FIELDS = ("review", "task_id", "unit", "strategy")


def task_record(task: Task, meta: dict[str, Any], config: LabelConfig) -> dict[str, Any]:
    """The task as Label Studio imports it, named as `config` says; predicted regions whose
    label the config lacks are left out (Label Studio could not show them)."""
    start, end = task.review
    data = {config.text_field: task.text, "review": task.text[start:end], **meta}
    result = []
    for i, entity in enumerate(task.entities):
        if config.labels and entity.label not in config.labels:
            continue
        item: dict[str, Any] = {
            "id": f"{task.id}-{i}",
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": "labels",
            "value": {
                "start": entity.start,
                "end": entity.end,
                "text": task.text[entity.start : entity.end],
                "labels": [entity.label],
            },
        }
        if entity.score is not None:
            item["score"] = round(entity.score, 6)
        result.append(item)
    prediction = {
        "model_version": "bilstm_crf",
        "score": round(task.confidence, 6),
        "result": result,
    }
    return {"data": data, "predictions": [prediction]}


def read_export(
    records: list[Any], name: str, config: LabelConfig | None
) -> Iterator[Answer | Skipped]:
    """The answers of a JSON or JSON_MIN export (told apart by the rows' fields)."""
    if not records:
        return
    first = records[0]
    if isinstance(first, dict) and "data" not in first and "annotations" not in first:
        if "annotation_id" not in first and "annotator" not in first:
            raise FormatError(
                f"{name}: neither Label Studio's JSON export (tasks with 'data' and "
                "'annotations') nor its JSON_MIN (rows with 'annotation_id'): export JSON "
                "or JSON_MIN from the project's Export dialog"
            )
        yield from _min_answers(records, name, config)
        return
    for number, record in enumerate(records, start=1):
        where = f"{name}, task {number}"
        if not isinstance(record, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            yield _json_answer(record, where, config)
        except Slip as slip:
            yield Skipped(_named(where, record.get("data") or {}), "unusable", str(slip))


def _json_answer(
    record: dict[str, Any], where: str, config: LabelConfig | None
) -> Answer | Skipped:
    data = record.get("data")
    if not isinstance(data, dict):
        raise FormatError(f"{where}: a Label Studio task needs a 'data' object")
    where = _named(where, data)
    done = [a for a in record.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        cancelled = bool(record.get("annotations"))
        return Skipped(where, "cancelled" if cancelled else "not annotated")
    latest = max(done, key=_when)
    regions = [item for item in latest.get("result") or [] if item.get("type") == "labels"]
    to_names = {item.get("to_name") for item in regions}
    text = _text(data, where, config, [item.get("value") or {} for item in regions], to_names)
    entities = [_entity(item.get("value") or {}, text, where) for item in regions]
    return checked_answer(text, review_region(data, text, where), entities, where, data)


def _min_answers(
    rows: list[Any], name: str, config: LabelConfig | None
) -> Iterator[Answer | Skipped]:
    """JSON_MIN rows, one per annotation: the latest row of each task is its answer."""
    latest: dict[Any, tuple[tuple[str, str], int, dict[str, Any]]] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise FormatError(f"{name}, row {number}: expected a JSON object")
        key = row.get("id", f"row {number}")
        if key not in latest or _when(row) >= latest[key][0]:
            latest[key] = (_when(row), number, row)
    for _, number, row in sorted(latest.values(), key=lambda item: item[1]):
        where = _named(f"{name}, row {number}", row)
        if "annotation_id" not in row and "annotator" not in row:
            yield Skipped(where, "not annotated")
            continue
        keys = [key for key, value in row.items() if key not in MIN_FIELDS and _is_regions(value)]
        if config is not None:
            keys = [key for key in keys if key == config.from_name] or keys
        values = [value for key in keys for value in row[key]]
        text = _text(row, where, config, values, set())
        try:
            entities = [_entity(value, text, where) for value in values]
            yield checked_answer(text, review_region(row, text, where), entities, where, row)
        except Slip as slip:
            yield Skipped(where, "unusable", str(slip))


def _is_regions(value: Any) -> bool:
    """Whether a JSON_MIN value is a list of labelled regions."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and "labels" in v and "start" in v for v in value)
    )


def _when(annotation: dict[str, Any]) -> tuple[str, str]:
    return str(annotation.get("updated_at", "")), str(annotation.get("created_at", ""))


def _named(where: str, data: dict[str, Any]) -> str:
    """`where`, with the task id `select` gave the task when it has one."""
    task_id = data.get("task_id")
    return f"{where} ({task_id})" if task_id is not None else where


def _entity(value: dict[str, Any], text: str, where: str) -> tuple[int, int, str]:
    labels = value.get("labels") or [None]
    if len(labels) != 1:
        raise Slip(f"a region with {len(labels)} labels ({labels}); NER needs one")
    return offsets(value.get("start"), value.get("end"), labels[0], text, where)


def _text(
    data: dict[str, Any],
    where: str,
    config: LabelConfig | None,
    values: list[dict[str, Any]],
    to_names: set[Any],
) -> str:
    """The task's text: the config's field, else the regions' `to_name`, `text`, or the one
    text field that every region's `text` agrees with."""
    if config is not None:
        if not isinstance(data.get(config.text_field), str):
            fields = sorted(k for k, v in data.items() if isinstance(v, str))
            raise FormatError(
                f"{where}: no text in the field {config.text_field!r} that the labeling config "
                f"names (the task's text fields: {fields})"
            )
        return data[config.text_field]
    for name in [*sorted(n for n in to_names if isinstance(n, str)), "text"]:
        if isinstance(data.get(name), str):
            return data[name]
    agree = {
        value
        for key, value in data.items()
        if isinstance(value, str)
        and key not in MIN_FIELDS + OWN_FIELDS
        and all(_agrees(value, region) for region in values)
    }
    if len(agree) == 1:
        return agree.pop()
    fields = sorted(
        k for k, v in data.items() if isinstance(v, str) and k not in MIN_FIELDS + OWN_FIELDS
    )
    raise FormatError(
        f"{where}: cannot tell which field holds the text ({fields}): pass the project's "
        "labeling config with --label-config"
    )


def _agrees(text: str, region: dict[str, Any]) -> bool:
    start, end, shown = region.get("start"), region.get("end"), region.get("text")
    if not isinstance(start, int) or not isinstance(end, int) or not isinstance(shown, str):
        return False
    return text[start:end] == shown
