"""Where the backend's model versions live: `WORK/versions/NNNNNN/`, one saved pipeline each.

Version 0 is the pipeline the server was started with (not copied). Each trained version is
written whole into a temporary folder beside the others, with its `version.json` last, then
renamed into place: a folder named `NNNNNN` is always complete, and the highest one is what
a restarted server loads. Folders left half-written by a crash are removed on start; only
the newest `keep` trained versions stay on disk.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacy.language import Language

PREFIX = "bilstm_crf-v"


@dataclass(frozen=True)
class Version:
    """A model version: its number, name (`model_version` in Label Studio), folder, and how
    it was made (`info`: the journal position it trained up to, answers, steps, seconds)."""

    number: int
    path: Path
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.number}"


class Versions:
    """The version folders under `work`, over the base pipeline `base`."""

    def __init__(self, work: str | Path, base: str | Path, keep: int = 3) -> None:
        self.folder = Path(work) / "versions"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.base = Path(base)
        self.keep = max(1, keep)
        for leftover in self.folder.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def latest(self) -> Version:
        """The newest complete trained version, else the base pipeline as version 0."""
        for path in sorted(self._complete(), reverse=True):
            info = json.loads((path / "version.json").read_text(encoding="utf8"))
            return Version(int(path.name), path, info)
        return Version(0, self.base, {"journal_seq": 0})

    def names(self) -> list[str]:
        return [f"{PREFIX}0"] + [f"{PREFIX}{int(path.name)}" for path in sorted(self._complete())]

    def write(self, nlp: Language, number: int, info: dict[str, Any]) -> Version:
        """Save `nlp` as version `number`, atomically; older versions beyond `keep` go."""
        final = self.folder / f"{number:06d}"
        if final.exists():
            raise FileExistsError(f"model version folder {final} exists already")
        temporary = self.folder / f".tmp-{number:06d}-{os.getpid()}"
        nlp.to_disk(temporary)
        info = {**info, "version": f"{PREFIX}{number}", "base": str(self.base)}
        marker = temporary / "version.json"
        marker.write_text(json.dumps(info, indent=2), encoding="utf8")
        with marker.open("rb") as file_:
            os.fsync(file_.fileno())
        os.rename(temporary, final)
        descriptor = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        for old in sorted(self._complete())[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return Version(number, final, info)

    def _complete(self) -> list[Path]:
        return [
            path
            for path in self.folder.iterdir()
            if path.name.isdigit() and (path / "version.json").is_file()
        ]
