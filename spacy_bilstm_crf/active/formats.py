"""Annotation tasks in the formats the tools import, and their exports read back.

Export (one JSON object per task):
- `prodigy`: `ner.manual` / `ner.correct` input: `text`, `tokens` (`text`, `start`, `end`,
  `id`, `ws`), `spans` (`start`, `end`, `token_start`, `token_end` inclusive, `label`,
  `score`), `meta` (the task's score, shown on the card). No hashes: Prodigy sets its own.
- `label-studio`: see `label_studio.py`; names from the project's labeling config.
- `doccano`: sequence-labelling JSONL, `text` and `label: [[start, end, "LABEL"], ...]`;
  the task id is `task_id`, since doccano writes its own `id` over an imported one.
- `jsonl`: this package's own, every field of a `Task`.

Import (`read_answers`): Prodigy's `db-out` JSONL, Label Studio's JSON or JSON_MIN export,
doccano's JSONL export, or the `jsonl` format with an `answer`. Each answer gives the text,
the reviewed region and the entities a person confirmed. Only what a person answered is
read: rejected and ignored Prodigy answers, cancelled or unannotated Label Studio tasks and
`jsonl` records without an answer are skipped (counted, not trained on); a rejected
`ner.manual` task says the text is unusable, not which tokens are outside an entity.

doccano turns imported pre-annotations into the importing user's own labels, and its plain
export holds every example: one nobody opened looks like one a person accepted. Only its
export with "Export only approved documents" holds just what a person marked done, so that
is the export read. Given the tasks as sent (`sent`), an export that holds every example
sent, some still labelled as sent, is refused as the plain export, unless `all_approved`
says that a person approved every example.
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .answers import (
    Answer,
    FormatError,
    Skipped,
    Slip,
    checked_answer,
    offsets,
    review_region,
)
from .label_config import LabelConfig
from .label_studio import read_export, task_record
from .tasks import Task

FORMATS = ("prodigy", "label-studio", "doccano", "jsonl")
# What a doccano example's labels were when sent: task id -> sorted (start, end, label).
Sent = dict[str, list[tuple[int, int, str]]]


def to_record(task: Task, fmt: str, config: LabelConfig | None = None) -> dict[str, Any]:
    """The task as the tool `fmt` imports it (Label Studio: named as `config` says)."""
    if fmt == "prodigy":
        return _prodigy(task)
    if fmt == "label-studio":
        return task_record(task, _meta(task), config or LabelConfig())
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


def _doccano(task: Task) -> dict[str, Any]:
    label = [[entity.start, entity.end, entity.label] for entity in task.entities]
    return {"text": task.text, "label": label, **_meta(task)}


def _jsonl(task: Task) -> dict[str, Any]:
    entities = [
        {"start": e.start, "end": e.end, "label": e.label, "score": e.score} for e in task.entities
    ]
    return {"text": task.text, "entities": entities, **_meta(task)}


def read_answers(
    path: Path,
    fmt: str,
    *,
    config: LabelConfig | None = None,
    sent: Sent | None = None,
    all_approved: bool = False,
) -> Iterator[Answer | Skipped]:
    """The answers of an export file of the tool `fmt`, in file order; a task a person made
    unusable (overlapping regions, say) comes as `Skipped` with the reason. `config`: the
    Label Studio project's labeling config; `sent` and `all_approved`: doccano (see above)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "label-studio":
        yield from read_export(_label_studio_records(path), path.name, config)
        return
    records = list(_json_lines(path.name, path.read_text(encoding="utf-8-sig")))
    if fmt == "doccano" and sent is not None and not all_approved:
        _refuse_plain_doccano(path, [record for _, record in records], sent)
    for where, record in records:
        if not isinstance(record, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            if fmt == "prodigy":
                yield _prodigy_answer(record, where)
            elif fmt == "doccano":
                yield _doccano_answer(record, where)
            else:
                yield _jsonl_answer(record, where)
        except Slip as slip:
            yield Skipped(where, "unusable", str(slip))


def _refuse_plain_doccano(path: Path, records: list[Any], sent: Sent) -> None:
    """A FormatError if the export holds every example sent and some are still labelled as
    they were sent: doccano's plain export, where nobody may have opened them."""
    exported = {
        str(record.get("task_id")): record for record in records if isinstance(record, dict)
    }
    if not sent or not set(sent) <= set(exported):
        return
    unchanged = [
        task_id
        for task_id, labels in sent.items()
        if sorted(tuple(label) for label in exported[task_id].get("label") or []) == labels
    ]
    if unchanged:
        raise FormatError(
            f"{path.name} holds all {len(sent):,} examples sent, {len(unchanged):,} of them "
            "still labelled as sent: this is doccano's plain export, where examples nobody "
            "opened carry the model's guesses. Export JSONL with 'Export only approved "
            "documents' checked (if a person approved every example, pass --all-approved)"
        )


def _label_studio_records(path: Path) -> list[Any]:
    """A Label Studio export: one JSON list, or JSON lines."""
    raw = path.read_text(encoding="utf-8-sig")
    if raw.lstrip().startswith("["):
        try:
            return json.loads(raw)
        except ValueError as error:
            raise FormatError(f"{path}: not valid JSON: {error}") from None
    return [record for _, record in _json_lines(path.name, raw)]


def _json_lines(name: str, raw: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{name}, line {number}", json.loads(line)
        except ValueError as error:
            raise FormatError(f"{name}, line {number}: not valid JSON: {error}") from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where}: the task has no text (got {value!r})")
    return value


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
        offsets(span.get("start"), span.get("end"), span.get("label"), text, where)
        for span in record.get("spans") or []
    ]
    return checked_answer(text, review_region(meta, text, where), entities, where, meta)


def _doccano_answer(record: dict[str, Any], where: str) -> Answer:
    """An example of doccano's export of approved documents."""
    text = _text(record.get("text", record.get("data")), where)
    spans = record.get("label", record.get("labels", record.get("entities")))
    if spans is None:
        raise FormatError(f"{where}: a doccano record needs 'label' (or 'entities')")
    entities = []
    for span in spans:
        if isinstance(span, dict):
            start, end = span.get("start_offset"), span.get("end_offset")
            entities.append(offsets(start, end, span.get("label"), text, where))
        elif isinstance(span, list) and len(span) == 3:
            entities.append(offsets(*span, text, where))
        else:
            raise FormatError(f"{where}: a label must be [start, end, LABEL], got {span!r}")
    return checked_answer(text, review_region(record, text, where), entities, where, record)


def _jsonl_answer(record: dict[str, Any], where: str) -> Answer | Skipped:
    answer = record.get("answer")
    if answer in ("reject", "ignore"):
        return Skipped(where, answer)
    if answer is None:
        return Skipped(where, "not answered")
    if answer != "accept":
        raise FormatError(f"{where}: 'answer' must be accept, reject or ignore, got {answer!r}")
    text = _text(record.get("text"), where)
    entities = [
        offsets(e.get("start"), e.get("end"), e.get("label"), text, where)
        for e in record.get("entities") or []
    ]
    return checked_answer(text, review_region(record, text, where), entities, where, record)


def sent_labels(path: Path) -> Sent:
    """The labels each doccano task had when `select` wrote it, by task id."""
    sent: Sent = {}
    for where, record in _json_lines(path.name, path.read_text(encoding="utf-8-sig")):
        if not isinstance(record, dict) or record.get("task_id") is None:
            raise FormatError(f"{where}: not a doccano task written by select (no task_id)")
        spans = record.get("label") or []
        sent[str(record["task_id"])] = sorted(
            offsets(*span, record.get("text", ""), where) for span in spans
        )
    return sent


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


def write_tasks(
    tasks: Iterable[Task], path: Path, fmt: str, config: LabelConfig | None = None
) -> int:
    """Write the tasks for the tool `fmt`: JSON lines, or (Label Studio) one JSON list, which
    its importer reads, named as `config` says. Returns how many were written."""
    records = [to_record(task, fmt, config) for task in tasks]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file_:
        if fmt == "label-studio":
            json.dump(records, file_, ensure_ascii=False, indent=1)
            file_.write("\n")
        else:
            for record in records:
                file_.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
