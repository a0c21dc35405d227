"""Training beside the server: one thread that retrains when enough answers came in, or at
once on `START_TRAINING`, and hands each new version over in one step.

A round reads the journal up to where it stands when the round starts, trains from the
version being served (`retrain.py`), writes the new version's folder (`versions.py`) and
calls `install` with it; the server swaps its tagger then. Predictions never wait for it:
the round works on its own copy of the pipeline. Answers that arrive during a round count
toward the next one. A failed round is logged and leaves the served version as it was; a
stop drops a round in progress (the journal keeps its answers for the next start).
"""

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .journal import Journal
from .retrain import RetrainSettings, Stopped, retrain
from .versions import Version, Versions

log = logging.getLogger(__name__)


class Trainer:
    """Retrains in a thread of its own every `every` journaled events (0: only when asked)."""

    def __init__(
        self,
        journal: Journal,
        versions: Versions,
        current: Version,
        install: Callable[[Version], None],
        settings: RetrainSettings,
        train: str | Path | None = None,
        every: int = 50,
    ) -> None:
        self.journal = journal
        self.versions = versions
        self.install = install
        self.settings = settings
        self.train = train
        self.every = every
        self._source = current
        self._trained_seq = int(current.info.get("journal_seq", 0))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._asked = False
        self.training = False
        self.last_error = ""
        self.rounds: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.noted()  # a restart may find answers enough for a round already

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; a round in progress is dropped at its next step."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Journaled events since the served version's training data was read."""
        return self.journal.seq - self._trained_seq

    def noted(self) -> None:
        """After events were journaled: wake the thread when there are enough new ones."""
        if self.every and self.pending >= self.every:
            self._wake.set()

    def ask(self) -> bool:
        """Train now (`START_TRAINING`); False when there is nothing new to train on."""
        with self._lock:
            if not self.pending and not self.training:
                return False
            self._asked = True
        self._wake.set()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "training": self.training,
            "pending_events": self.pending,
            "retrain_every": self.every,
            "last_error": self.last_error,
            "rounds": self.rounds[-5:],
        }

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._lock:
                asked, self._asked = self._asked, False
            if not (asked and self.pending) and not (self.every and self.pending >= self.every):
                continue
            self.training = True
            try:
                self._round()
            except Stopped:
                log.info("training stopped: the round in progress was dropped")
                return
            except Exception as error:  # a failed round must not take the server down
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("training failed; still serving %s", self._source.name)
            finally:
                self.training = False
            self.noted()

    def _round(self) -> None:
        begin = time.perf_counter()
        upto = self.journal.seq
        answers = self.journal.answers(upto)
        log.info(
            "training from %s on %d answers (journal up to %d)",
            self._source.name,
            sum(1 for answer in answers if not hasattr(answer, "reason")),
            upto,
        )
        trained = retrain(self._source.path, answers, self.train, self.settings, self._stop)
        info = {"journal_seq": upto, "from": self._source.name, **trained.info()}
        with trained.averaged():
            version = self.versions.write(trained.nlp, self._source.number + 1, info)
        self.install(version)
        seconds = time.perf_counter() - begin
        self.rounds.append({**info, "version": version.name, "total_seconds": round(seconds, 1)})
        self._source, self._trained_seq = version, upto
        log.info("%s ready after %.1f s: %s", version.name, seconds, trained.ingested)
