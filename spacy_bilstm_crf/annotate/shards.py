"""The batch annotator's output: shards of records and the manifest that lists them.

Shards are written to a hidden temporary file and renamed into place, and the manifest lists
only shards that are complete, which is what makes a killed run resumable without loss.
"""

import os
from pathlib import Path
from typing import Any

import srsly

from .rows import AnnotateError, require_pyarrow

FORMATS = ("jsonl", "parquet")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def shard_name(index: int, output_format: str) -> str:
    """`part-00000.jsonl`, `part-00001.parquet`, ...: names that sort in row order."""
    return f"part-{index:05d}.{output_format}"


def write_shard(
    folder: Path, name: str, records: list[dict], output_format: str, scored: bool
) -> int:
    """Write one shard atomically (a hidden temporary file, fsync, rename); return its bytes."""
    final = folder / name
    temporary = folder / f".{name}.tmp"
    if output_format == "jsonl":
        srsly.write_jsonl(temporary, records)
    else:
        _write_parquet(temporary, records, scored)
    with temporary.open("rb+") as written:
        os.fsync(written.fileno())
    os.replace(temporary, final)
    _fsync_folder(folder)
    return final.stat().st_size


def _write_parquet(path: Path, records: list[dict], scored: bool) -> None:
    """Records as a Parquet table with a fixed schema for `ents` and `error`."""
    pyarrow = require_pyarrow("Writing Parquet output")
    fields = [("start_char", pyarrow.int64()), ("end_char", pyarrow.int64())]
    fields.append(("label", pyarrow.string()))
    if scored:
        fields.append(("score", pyarrow.float64()))
    ents_type = pyarrow.list_(pyarrow.struct(fields))
    ids = [record["id"] for record in records]
    try:
        id_array = pyarrow.array(ids)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError):
        id_array = pyarrow.array([None if i is None else str(i) for i in ids], pyarrow.string())
    table = pyarrow.table(
        {
            "id": id_array,
            "ents": pyarrow.array([record["ents"] for record in records], ents_type),
            "error": pyarrow.array([record["error"] for record in records], pyarrow.string()),
        }
    )
    pyarrow.parquet.write_table(table, path)


def read_shard(path: Path) -> list[dict]:
    """The records of one output shard (JSONL or Parquet), as written."""
    if path.suffix == ".jsonl":
        return list(srsly.read_jsonl(path))
    pyarrow = require_pyarrow("Reading Parquet output")
    return pyarrow.parquet.read_table(path).to_pylist()


def input_fingerprint(path: Path) -> dict[str, Any]:
    """What identifies the input for resuming: its absolute path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Manifest:
    """`manifest.json`: the input, the settings that change the output, the complete shards."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data

    @classmethod
    def open(
        cls, folder: Path, source: dict[str, Any], settings: dict[str, Any], overwrite: bool
    ) -> "Manifest":
        """The folder's manifest to resume, or a new one; refuses to mix different runs."""
        if folder.exists() and not folder.is_dir():
            raise AnnotateError(f"The output {folder} exists and is not a folder.")
        path = folder / MANIFEST
        if overwrite:
            _remove_outputs(folder)
        elif path.exists():
            data = srsly.read_json(path)
            differences = _differences(data, source, settings)
            if differences:
                raise AnnotateError(
                    f"{folder} holds the output of another run ({'; '.join(differences)}). "
                    "Pass --overwrite to replace it, or choose another output folder."
                )
            manifest = cls(folder, data)
            manifest._forget_missing_shards()
            return manifest
        elif folder.exists() and any(folder.glob("part-*")):
            raise AnnotateError(
                f"{folder} has shards but no {MANIFEST}: it is not this annotator's output. "
                "Pass --overwrite to replace them, or choose another output folder."
            )
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "version": MANIFEST_VERSION,
            "input": source,
            "settings": settings,
            "shards": {},
            "complete": False,
            "rows": None,
        }
        manifest = cls(folder, data)
        manifest.save()
        return manifest

    def is_done(self, name: str) -> bool:
        return name in self.data["shards"]

    def counts(self, name: str) -> tuple[int, int]:
        """The rows and error rows of a shard that the manifest lists as complete."""
        shard = self.data["shards"][name]
        return shard["rows"], shard["errors"]

    def add_shard(self, name: str, rows: int, errors: int, size: int) -> None:
        self.data["shards"][name] = {"rows": rows, "errors": errors, "bytes": size}
        self.save()

    def finish(self) -> None:
        self.data["complete"] = True
        self.data["rows"] = sum(shard["rows"] for shard in self.data["shards"].values())
        self.save()

    def save(self) -> None:
        """Replace the manifest atomically, as the shards are."""
        temporary = self.folder / f".{MANIFEST}.tmp"
        srsly.write_json(temporary, self.data)
        os.replace(temporary, self.folder / MANIFEST)
        _fsync_folder(self.folder)

    def _forget_missing_shards(self) -> None:
        """Drop listed shards whose file is gone or has another size: they are redone."""
        shards = self.data["shards"]
        for name, info in list(shards.items()):
            path = self.folder / name
            if not path.exists() or path.stat().st_size != info["bytes"]:
                del shards[name]
                self.data["complete"] = False


def _differences(data: dict[str, Any], source: dict[str, Any], settings: dict[str, Any]) -> list:
    """What differs between a manifest and this run, as `name was X, now Y` phrases."""
    if data.get("version") != MANIFEST_VERSION:
        return [f"manifest version {data.get('version')}, this annotator writes {MANIFEST_VERSION}"]
    # As the manifest would hold them: JSON keeps floats to ten digits or so.
    source, settings = srsly.json_loads(srsly.json_dumps([source, settings]))
    found = []
    for section, now in (("input", source), ("settings", settings)):
        before = data.get(section, {})
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                found.append(f"{section} {key} was {before.get(key)!r}, now {now.get(key)!r}")
    return found


def _remove_outputs(folder: Path) -> None:
    """Delete this annotator's files (shards, temporaries, manifest), nothing else."""
    if not folder.is_dir():
        return
    for pattern in ("part-*", ".part-*.tmp", MANIFEST, f".{MANIFEST}.tmp"):
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
