"""The backend's journal: every annotation event, on disk before the backend answers.

One JSON line per event in `journal.jsonl`, written, flushed and fsync'd under a lock, so
that a crash right after the answer loses nothing. A line cut short by a crash while it was
written (never answered) is dropped on open, so that the next line starts cleanly.

`answers()` replays the journal: the latest state of each annotation (deleted ones gone),
then per task its latest annotation that was not cancelled (as Label Studio's export does),
as the `Answer`s that `active/ingest.py` turns into docs with partial labels. A region that
cannot be used makes its task `Skipped` with the reason; the rest go in.
"""

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..active.answers import Answer, FormatError, Skipped, Slip, checked_answer, offsets
from .protocol import AnswerEvent

log = logging.getLogger(__name__)


class Journal:
    """An append-only, fsync'd log of annotation events."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries = self._read()
        self._file = self.path.open("a", encoding="utf8")
        _sync_folder(self.path.parent)

    @property
    def seq(self) -> int:
        """The number of events written so far (the last one's `seq`)."""
        return len(self._entries)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):
            log.warning(
                "journal %s: dropped a last line cut short (%d bytes, never answered)",
                self.path,
                len(raw) - len(complete),
            )
            with self.path.open("r+b") as file_:
                file_.truncate(len(complete))
                os.fsync(file_.fileno())
        return [json.loads(line) for line in complete.decode("utf8").splitlines() if line]

    def append(self, entries: list[dict[str, Any]]) -> int:
        """Write `entries` (each given the next `seq` and the time) and fsync; returns the
        last `seq`."""
        with self._lock:
            lines = []
            for entry in entries:
                entry = {"seq": len(self._entries) + 1, "at": round(time.time(), 3), **entry}
                self._entries.append(entry)
                lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.write("".join(lines))
            self._file.flush()
            os.fsync(self._file.fileno())
            return len(self._entries)

    def add_answers(self, action: str, events: list[AnswerEvent]) -> int:
        return self.append([_answer_entry(action, event) for event in events])

    def add_deletes(self, project: str, ids: list[Any]) -> int:
        entries = [{"action": "DELETED", "project": project, "annotation": i} for i in ids]
        return self.append(entries)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def new_states(self, events: list[AnswerEvent]) -> list[AnswerEvent]:
        """The events whose state of the annotation is not journaled yet (`/train` resends
        every answer each time)."""
        with self._lock:
            latest = _latest_states(self._entries)
        return [
            event
            for event in events
            if latest.get((event.project, event.annotation), {}).get("updated_at")
            != event.updated_at
        ]

    def answers(self, upto: int | None = None) -> list[Answer | Skipped]:
        """Each task's latest answer among the first `upto` entries (all by default)."""
        entries = self.entries()[:upto]
        per_task: dict[tuple[str, Any], dict[str, Any]] = {}
        for entry in _latest_states(entries).values():
            if entry["action"] == "DELETED" or entry.get("cancelled"):
                continue
            key = (entry["project"], entry["task"])
            if key not in per_task or _order(entry) >= _order(per_task[key]):
                per_task[key] = entry
        return [_answer(entry) for entry in sorted(per_task.values(), key=lambda e: e["seq"])]

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _answer_entry(action: str, event: AnswerEvent) -> dict[str, Any]:
    return {
        "action": action,
        "project": event.project,
        "task": event.task,
        "annotation": event.annotation,
        "updated_at": event.updated_at,
        "cancelled": event.cancelled,
        "text": event.text,
        "review": list(event.review) if event.review else None,
        "regions": event.regions,
    }


def _latest_states(entries: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, Any]]:
    """Per `(project, annotation)`, its last event (a delete included)."""
    states: dict[tuple[str, Any], dict[str, Any]] = {}
    for entry in entries:
        if "annotation" in entry:
            states[(entry["project"], entry["annotation"])] = entry
    return states


def _order(entry: dict[str, Any]) -> tuple[str, int]:
    return entry.get("updated_at") or "", entry["seq"]


def _answer(entry: dict[str, Any]) -> Answer | Skipped:
    """The journaled annotation as an `Answer` (a `Skipped` naming why it cannot be)."""
    where = f"project {entry['project']}, task {entry['task']}, annotation {entry['annotation']}"
    text = entry["text"]
    review = tuple(entry["review"]) if entry.get("review") else (0, len(text))
    try:
        if not 0 <= review[0] <= review[1] <= len(text):
            raise FormatError(f"{where}: review region {review} does not fit the text")
        entities = []
        for value in entry["regions"]:
            labels = value.get("labels") or [None]
            if len(labels) != 1:
                raise Slip(f"a region with {len(labels)} labels ({labels}); NER needs one")
            entities.append(offsets(value.get("start"), value.get("end"), labels[0], text, where))
        meta = {"source": (entry["project"], entry["task"])}
        return checked_answer(text, review, entities, where, meta)  # type: ignore[arg-type]
    except (FormatError, Slip) as problem:
        return Skipped(where, "unusable", str(problem))


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a file just created in it survives a crash."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
