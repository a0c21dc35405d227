"""Put the backend together and serve it: the work folder, the version to resume from, the
journal, the trainer, the HTTP app under uvicorn, and a clean stop on SIGINT or SIGTERM.

    WORK/journal.jsonl         every annotation event (journal.py)
    WORK/versions/NNNNNN/      the trained versions (versions.py)

A restart with the same `--work` serves the newest version and counts the journal's events
since it toward the next round. uvicorn stops on the first SIGINT or SIGTERM: it answers the
requests under way (a webhook's journal line included), then the trainer drops a round in
progress and the journal is closed. The journal is fsync'd at every event, so even a kill
loses no answered event.
"""

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from .backend import Backend
from .journal import Journal
from .retrain import RetrainSettings
from .tagger import Tagger
from .trainer import Trainer
from .versions import Versions

log = logging.getLogger("spacy_bilstm_crf.serve")


@dataclass
class Options:
    """What `serve` is told: the model, the work folder, training (`every` events, 0: only
    when asked; `train`: the model's own training data to mix in) and threads."""

    model: Path
    work: Path
    train: Path | None = None
    every: int = 50
    steps: int = 300
    threads: int = 1
    training: bool = True
    keep: int = 3


def open_backend(options: Options) -> Backend:
    """The backend over `options.work`, serving its newest version, its trainer started."""
    torch.set_num_threads(options.threads)
    versions = Versions(options.work, options.model, keep=options.keep)
    current = versions.latest()
    if current.number:
        log.info("resuming from %s (%s)", current.name, current.path)
    tagger = Tagger(current.path, current.name, threads=options.threads)
    journal = Journal(options.work / "journal.jsonl")
    backend = Backend(tagger, journal)
    if options.training:
        settings = RetrainSettings(steps=options.steps, threads=options.threads)
        backend.trainer = Trainer(
            journal, versions, current, backend.install, settings, options.train, options.every
        )
        backend.trainer.start()
    log.info(
        "serving %s (labels %s); journal %s with %d events",
        tagger.version,
        list(tagger.labels),
        journal.path,
        journal.seq,
    )
    return backend


def close_backend(backend: Backend) -> None:
    if backend.trainer is not None:
        backend.trainer.stop()
    backend.journal.close()


class ServeError(ValueError):
    """A setting the server cannot start with; the message says which."""


class Stop(Exception):
    """SIGTERM: stop as on Ctrl-C, with exit code 0."""


def _stop(signum: int, frame: object) -> None:
    raise Stop


def serve(
    options: Options, host: str, port: int, credentials: tuple[str, str] | None = None
) -> int:
    """Serve until SIGINT (exit 130, as the package's commands) or SIGTERM (exit 0)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        raise ServeError(
            f"serve needs {error.name}: pip install 'spacy-bilstm-crf[serve]'"
        ) from None

    signal.signal(signal.SIGTERM, _stop)
    backend = open_backend(options)
    try:
        app = create_app(backend, credentials)
        config = uvicorn.Config(app, host=host, port=port, log_level="info", workers=1)
        server = uvicorn.Server(config)
        log.info("listening on http://%s:%d%s", host, port, " (basic auth)" if credentials else "")
        server.run()  # re-raises the stopping signal once it has shut down
    except Stop:
        log.info("stopped on SIGTERM")
        return 0
    finally:
        close_backend(backend)
        log.info("journal closed with %d events", backend.journal.seq)
    return 0


def read_credentials(path: str | None) -> tuple[str, str] | None:
    """`(user, password)` for basic auth: from a file holding `user:password`, else from
    `BASIC_AUTH_USER` and `BASIC_AUTH_PASS` (the names Label Studio's backend SDK reads);
    None when neither is given. The values are never logged."""
    if path:
        if not Path(path).is_file():
            raise ServeError(f"the credentials file {path!r} does not exist")
        text = Path(path).read_text(encoding="utf8").strip()
        user, colon, password = text.partition(":")
        if not colon or not user or not password:
            raise ServeError(f"{path} must hold one line 'user:password'")
        return user, password
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    if user and password:
        return user, password
    if user or password:
        raise ServeError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
    return None
