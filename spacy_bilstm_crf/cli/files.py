"""The files of an annotation round's folder, named for the tool, and writes that leave either
the old file or the new one, never half of one (a Ctrl-C can come at any time)."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..active.formats import FormatError

# Per tool: what its export is called in a round's folder, and how to make it.
EXPORTS = {
    "prodigy": "answers.jsonl: prodigy db-out DATASET > answers.jsonl",
    "label-studio": "answers.json: the project's Export, JSON or JSON_MIN",
    "doccano": "answers.jsonl: Export Dataset, JSONL (with 'Export only approved documents')",
    "jsonl": "answers.jsonl: the tasks with an 'answer' and the entities a person set",
}


def suffix(fmt: str) -> str:
    """Label Studio imports one JSON list; the other tools read JSON lines."""
    return ".json" if fmt == "label-studio" else ".jsonl"


def tasks_file(folder: Path, fmt: str) -> Path:
    """Where `select` writes a round's tasks for the tool `fmt`."""
    return folder / f"tasks{suffix(fmt)}"


def config_file(tasks: Path) -> Path:
    """The Label Studio labeling config written beside a tasks file."""
    return tasks.with_name(tasks.stem + ".label_config.xml")


def answers_file(folder: Path, fmt: str) -> Path:
    """The tool's export in a round's folder: `answers.json` or `answers.jsonl`."""
    found = [folder / name for name in (f"answers{suffix(fmt)}", "answers.json", "answers.jsonl")]
    for path in found:
        if path.is_file():
            return path
    raise FormatError(f"No answers in {str(folder)!r}: export them to {folder}/{EXPORTS[fmt]}")


@contextlib.contextmanager
def replace_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; it becomes `path` only once written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
