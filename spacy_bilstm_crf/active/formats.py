"""Annotation tasks in the formats the tools import, and their exports read back.

Export (one JSON object per task):
- `prodigy`: `ner.manual` / `ner.correct` input: `text`, `tokens` (`text`, `start`, `end`,
  `id`, `ws`), `spans` (`start`, `end`, `token_start`, `token_end` inclusive, `label`,
  `score`), `meta` (the task's score, shown on the card). No hashes: Prodigy sets its own.
- `label-studio`: `data` (`text`, the region to review, the task id) and one prediction
  whose `result` items are `labels` regions with a `score` each, and whose `score` is the
  model's confidence, so that Label Studio's lowest-first order shows the least certain
  first. The labeling config (`label_studio_config`) names `label` and `text`.
- `doccano`: sequence-labelling JSONL, `text` and `label: [[start, end, "LABEL"], ...]`;
  the task id is `task_id`, since doccano writes its own `id` over an imported one.
- `jsonl`: this package's own, every field of a `Task`.

Import (`read_answers`): Prodigy's `db-out` JSONL, Label Studio's JSON export (a list of
tasks, or JSON lines), doccano's JSONL export, or the `jsonl` format with an `answer`. Each
answer gives the text, the reviewed region and the entities a person confirmed. Rejected and
ignored Prodigy answers, cancelled Label Studio annotations and tasks nobody annotated are
skipped (counted, not trained on): a rejected `ner.manual` task says the text is unusable,
not which tokens are outside an entity.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from .tasks import Task

FORMATS = ("prodigy", "label-studio", "doccano", "jsonl")
# The names that the Label Studio config and the tasks' results share.
LS_FROM, LS_TO = "label", "text"


class FormatError(ValueError):
    """An answer file that cannot be read; the message names the line or task."""


def to_record(task: Task, fmt: str) -> dict[str, Any]:
    """The task as the tool `fmt` imports it."""
    if fmt == "prodigy":
        return _prodigy(task)
    if fmt == "label-studio":
        return _label_studio(task)
    if fmt == "doccano":
        return _doccano(task)
    if fmt == "jsonl":
        return _jsonl(task)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _meta(task: Task) -> dict[str, Any]:
    """What every format carries back and forth: the task id, its source row and offset, the
    region to review, and the scores."""
    start, end = task.review
    return {
        "task_id": task.id,
        "source": task.source,
        "offset": task.offset,
        "review_start": start,
        "review_end": end,
        "score": round(task.score, 6),
        "confidence": round(task.confidence, 6),
        **task.meta,
    }


def _prodigy(task: Task) -> dict[str, Any]:
    tokens = [
        {"text": text, "start": start, "end": end, "id": i, "ws": ws}
        for i, (text, start, end, ws) in enumerate(task.tokens)
    ]
    spans = []
    for entity in task.entities:
        span = {
            "start": entity.start,
            "end": entity.end,
            "token_start": entity.token_start,
            "token_end": entity.token_end - 1,  # Prodigy's token_end is inclusive
            "label": entity.label,
        }
        if entity.score is not None:
            span["score"] = round(entity.score, 6)
        spans.append(span)
    start, end = task.review
    meta = {**_meta(task), "review": task.text[start:end]}
    return {"text": task.text, "tokens": tokens, "spans": spans, "meta": meta}


def _label_studio(task: Task) -> dict[str, Any]:
    start, end = task.review
    data = {LS_TO: task.text, "review": task.text[start:end], **_meta(task)}
    result = []
    for i, entity in enumerate(task.entities):
        item: dict[str, Any] = {
            "id": f"{task.id}-{i}",
            "from_name": LS_FROM,
            "to_name": LS_TO,
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


def _doccano(task: Task) -> dict[str, Any]:
    label = [[entity.start, entity.end, entity.label] for entity in task.entities]
    return {"text": task.text, "label": label, **_meta(task)}


def _jsonl(task: Task) -> dict[str, Any]:
    entities = [
        {"start": e.start, "end": e.end, "label": e.label, "score": e.score} for e in task.entities
    ]
    return {"text": task.text, "entities": entities, **_meta(task)}


def label_studio_config(labels: Iterable[str]) -> str:
    """A Label Studio labeling config for the tasks: the `text` field, `label` regions."""
    choices = "\n".join(f"    <Label value={quoteattr(label)}/>" for label in labels)
    return (
        "<View>\n"
        f'  <Labels name="{LS_FROM}" toName="{LS_TO}">\n{choices}\n  </Labels>\n'
        f'  <Text name="{LS_TO}" value="${LS_TO}"/>\n'
        '  <Header value="$review"/>\n'
        "</View>\n"
    )


@dataclass
class Answer:
    """A reviewed task: the text, the region the person reviewed, the entities they set
    (character offsets, end exclusive) and where it came from in the file."""

    text: str
    review: tuple[int, int]
    entities: list[tuple[int, int, str]]
    where: str
    source: Any = None
    offset: int = 0


@dataclass
class Skipped:
    """A task left out, and why."""

    where: str
    reason: str


def read_answers(path: Path, fmt: str) -> Iterator[Answer | Skipped]:
    """The answers of an export file of the tool `fmt`, in file order."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    for where, record in _records(path, fmt):
        if not isinstance(record, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if fmt == "prodigy":
            yield _prodigy_answer(record, where)
        elif fmt == "label-studio":
            yield _label_studio_answer(record, where)
        elif fmt == "doccano":
            yield _doccano_answer(record, where)
        else:
            yield _jsonl_answer(record, where)


def _records(path: Path, fmt: str) -> Iterator[tuple[str, Any]]:
    """`(where, record)` for each record: JSON lines, or (Label Studio) one JSON list."""
    raw = path.read_text(encoding="utf-8-sig")
    if fmt == "label-studio" and raw.lstrip().startswith("["):
        try:
            tasks = json.loads(raw)
        except ValueError as error:
            raise FormatError(f"{path}: not valid JSON: {error}") from None
        for number, task in enumerate(tasks, start=1):
            yield f"{path.name}, task {number}", task
        return
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path.name}, line {number}", json.loads(line)
        except ValueError as error:
            raise FormatError(f"{path.name}, line {number}: not valid JSON: {error}") from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: the task has no text (got {value!r})")
    return value


def _offsets(start: Any, end: Any, label: Any, text: str, where: str) -> tuple[int, int, str]:
    """A checked entity: whole-number offsets inside the text, start < end, a label."""
    numbers = isinstance(start, int) and isinstance(end, int)
    if not numbers or isinstance(start, bool) or isinstance(end, bool):
        raise FormatError(f"{where}: entity offsets must be whole numbers, got {start!r}, {end!r}")
    if not 0 <= start < end <= len(text):
        raise FormatError(
            f"{where}: entity {start}-{end} is not inside the text ({len(text)} characters)"
        )
    if not isinstance(label, str) or not label.strip():
        raise FormatError(f"{where}: entity {start}-{end} has no label (got {label!r})")
    return start, end, label


def _review(meta: dict[str, Any], text: str, where: str) -> tuple[int, int]:
    """The reviewed region from the task's fields (all the text when they are absent)."""
    start, end = meta.get("review_start", 0), meta.get("review_end", len(text))
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
        raise FormatError(f"{where}: review_start/review_end {start!r}/{end!r} do not fit the text")
    return start, end


def _prodigy_answer(record: dict[str, Any], where: str) -> Answer | Skipped:
    answer = record.get("answer")
    if answer in ("reject", "ignore"):
        return Skipped(where, answer)
    if answer != "accept":
        raise FormatError(f"{where}: 'answer' must be accept, reject or ignore, got {answer!r}")
    if record.get("_view_id") == "ner" or any("answer" in s for s in record.get("spans", [])):
        raise FormatError(
            f"{where}: a binary answer (ner.teach) judges one span, not a region: annotate "
            "the tasks with ner.manual or ner.correct"
        )
    text = _text(record.get("text"), where)
    meta = record.get("meta") or {}
    entities = [
        _offsets(span.get("start"), span.get("end"), span.get("label"), text, where)
        for span in record.get("spans") or []
    ]
    return _answer(text, _review(meta, text, where), entities, where, meta)


def _label_studio_answer(record: dict[str, Any], where: str) -> Answer | Skipped:
    data = record.get("data")
    if not isinstance(data, dict):
        raise FormatError(f"{where}: a Label Studio task needs a 'data' object")
    text = _text(data.get(LS_TO), where)
    done = [a for a in record.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        cancelled = bool(record.get("annotations"))
        return Skipped(where, "cancelled" if cancelled else "not annotated")
    latest = max(done, key=lambda a: (str(a.get("updated_at", "")), str(a.get("created_at", ""))))
    entities = []
    for item in latest.get("result") or []:
        if item.get("type") != "labels":
            continue
        value = item.get("value") or {}
        labels = value.get("labels") or [None]
        if len(labels) != 1:
            raise FormatError(f"{where}: a region with {len(labels)} labels; NER needs one")
        entities.append(_offsets(value.get("start"), value.get("end"), labels[0], text, where))
    return _answer(text, _review(data, text, where), entities, where, data)


def _doccano_answer(record: dict[str, Any], where: str) -> Answer:
    text = _text(record.get("text", record.get("data")), where)
    spans = record.get("label", record.get("labels", record.get("entities")))
    if spans is None:
        raise FormatError(f"{where}: a doccano record needs 'label' (or 'entities')")
    entities = []
    for span in spans:
        if isinstance(span, dict):
            start, end = span.get("start_offset"), span.get("end_offset")
            entities.append(_offsets(start, end, span.get("label"), text, where))
        elif isinstance(span, list) and len(span) == 3:
            entities.append(_offsets(*span, text, where))
        else:
            raise FormatError(f"{where}: a label must be [start, end, LABEL], got {span!r}")
    return _answer(text, _review(record, text, where), entities, where, record)


def _jsonl_answer(record: dict[str, Any], where: str) -> Answer | Skipped:
    answer = record.get("answer", "accept")
    if answer in ("reject", "ignore"):
        return Skipped(where, answer)
    text = _text(record.get("text"), where)
    entities = [
        _offsets(e.get("start"), e.get("end"), e.get("label"), text, where)
        for e in record.get("entities") or []
    ]
    return _answer(text, _review(record, text, where), entities, where, record)


def _answer(
    text: str,
    review: tuple[int, int],
    entities: list[tuple[int, int, str]],
    where: str,
    meta: dict[str, Any],
) -> Answer:
    """An answer whose entities do not overlap one another."""
    ordered = sorted(entities)
    for (_, end, _), (start, _, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise FormatError(f"{where}: entities overlap at characters {start}-{end}")
    offset = meta.get("offset", 0)
    return Answer(text, review, ordered, where, meta.get("source"), offset)


def read_task_ids(path: Path) -> list[str]:
    """The task ids in a file of tasks or answers in any of the formats (JSON lines, or one
    JSON list), or in a plain list of ids, one per line."""
    raw = path.read_text(encoding="utf-8-sig")
    if raw.lstrip().startswith("["):
        try:
            records: list[Any] = json.loads(raw)
        except ValueError as error:
            raise FormatError(f"{path}: not valid JSON: {error}") from None
    else:
        records = []
        for line in raw.splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line) if line.startswith("{") else line)
                except ValueError as error:
                    raise FormatError(f"{path}: {line[:40]!r} is not valid JSON: {error}") from None
    ids = []
    for record in records:
        if isinstance(record, str):
            ids.append(record)
            continue
        found = [
            place.get("task_id")
            for place in (record, record.get("meta") or {}, record.get("data") or {})
            if isinstance(place, dict) and place.get("task_id") is not None
        ]
        if not found:
            raise FormatError(f"{path}: a record without a task_id: {str(record)[:80]}")
        ids.append(str(found[0]))
    return ids


def write_tasks(tasks: Iterable[Task], path: Path, fmt: str) -> int:
    """Write the tasks for the tool `fmt`: JSON lines, or (Label Studio) one JSON list, which
    its importer reads. Returns how many were written."""
    records = [to_record(task, fmt) for task in tasks]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file_:
        if fmt == "label-studio":
            json.dump(records, file_, ensure_ascii=False, indent=1)
            file_.write("\n")
        else:
            for record in records:
                file_.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
