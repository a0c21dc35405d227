"""A real Label Studio for tests and benchmarks: installed from the package index into a
venv of its own, started on 127.0.0.1 with a throwaway data folder and token, and driven
through its HTTP API as a person's browser would.

    python benchmarks/scripts/label_studio_app.py install [--venv DIR]

installs `label-studio==1.23.2` into `~/.cache/spacy-bilstm-crf/label-studio-1.23.2` (or
`$SPACY_BILSTM_CRF_LABEL_STUDIO`), once: a finished install leaves a marker file, a lock
keeps two installs (CI's background one and a test's) from running at once, and a broken
install is removed and done again. Label Studio 1.23.2 starts only with `SENTRY_DSN` empty
next to sentry-sdk 3.x, and reaches a backend on 127.0.0.1 only with `ML_BLOCK_LOCAL_IP` and
`SSRF_PROTECTION_ENABLED` off (it blocks local addresses by default: right for a server,
wrong for one person's machine).
"""

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

VERSION = "1.23.2"
DEFAULT_VENV = Path.home() / ".cache" / "spacy-bilstm-crf" / f"label-studio-{VERSION}"
TOKEN = "spacy-bilstm-crf-test-token-0123456789"
USER, PASSWORD = "tester@example.com", "not-a-secret-1234"


def venv_path() -> Path:
    return Path(os.environ.get("SPACY_BILSTM_CRF_LABEL_STUDIO") or DEFAULT_VENV)


def executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def install(venv: Path | None = None, log: Path | None = None) -> Path:
    """The venv with Label Studio in it, installed first if needed; returns its command."""
    venv = venv or venv_path()
    marker = venv / f".installed-{VERSION}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another install in progress: wait for it
        if marker.exists() and executable(venv).exists():
            return executable(venv)
        shutil.rmtree(venv, ignore_errors=True)
        output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            python = shutil.which("python3") or sys.executable
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=output, stderr=output)
            subprocess.run(
                [*pip, f"label-studio=={VERSION}"], check=True, stdout=output, stderr=output
            )
        finally:
            if log:
                output.close()
        marker.write_text(VERSION)
        return executable(venv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabelStudio:
    """A running Label Studio and its API, as the test user."""

    def __init__(self, url: str, process: subprocess.Popen) -> None:
        self.url = url
        self.process = process

    def api(self, method: str, path: str, body: Any = None, timeout: float = 300) -> Any:
        """One API call with the user's token; an error names the call and the answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: {error.code} {error.read()[:2000]!r}") from None
        return json.loads(raw) if raw else None

    def create_project(self, title: str, config: str, **settings: Any) -> int:
        body = {"title": title, "label_config": config, **settings}
        return self.api("POST", "/api/projects", body)["id"]

    def connect_backend(
        self, project: int, url: str, interactive: bool = True, **auth: Any
    ) -> dict:
        """Add the ML backend to the project, as the project's Model settings do."""
        body = {
            "url": url,
            "project": project,
            "is_interactive": interactive,
            "title": "bilstm_crf",
        }
        return self.api("POST", "/api/ml", {**body, **auth})

    def webhook_headers(self, project: int, url: str, headers: dict[str, str]) -> None:
        """Headers for the webhook Label Studio made for the backend at `url` (it sends the
        backend's basic auth with predictions, not with webhooks: Settings > Webhooks)."""
        hooks = self.api("GET", f"/api/webhooks?project={project}")
        (hook,) = [hook for hook in hooks if hook["url"] == url.rstrip("/") + "/webhook"]
        self.api("PATCH", f"/api/webhooks/{hook['id']}", {"headers": headers})

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        self.api("POST", f"/api/projects/{project}/import", tasks)
        return sorted(task["id"] for task in self.tasks(project))

    def tasks(self, project: int) -> list[dict[str, Any]]:
        found, page = [], 1
        while True:
            answer = self.api("GET", f"/api/tasks?project={project}&page={page}&page_size=500")
            found += answer["tasks"]
            if len(found) >= answer["total"] or not answer["tasks"]:
                return found
            page += 1

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> None:
        """The data manager's "Retrieve Predictions" action on these tasks."""
        body = {"selectedItems": {"all": False, "included": task_ids}, "project": project}
        self.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", body)

    def predictions(self, task: int) -> list[dict[str, Any]]:
        return self.api("GET", f"/api/predictions?task={task}")

    def interactive(self, backend: int, task: int, context: dict[str, Any]) -> dict[str, Any]:
        """What the editor asks for when a person draws a region with auto-annotation on."""
        body = {"task": task, "context": context}
        return self.api("POST", f"/api/ml/{backend}/interactive-annotating", body)

    def annotate(self, task: int, result: list[dict[str, Any]], **extra: Any) -> dict:
        """Submit an annotation, as the editor's Submit button does (webhooks go out)."""
        return self.api("POST", f"/api/tasks/{task}/annotations", {"result": result, **extra})

    def start_training(self, backend: int) -> None:
        self.api("POST", f"/api/ml/{backend}/train", {})


@contextlib.contextmanager
def running(
    data: Path, command: Path | None = None, port: int | None = None, start_timeout: float = 900
) -> Iterator[LabelStudio]:
    """Label Studio on 127.0.0.1 with data in `data` (new), until the block ends. Its first
    start migrates a new database: over 300 s on a 2-core machine busy with other jobs."""
    command = command or install()
    port = port or free_port()
    env = {
        **os.environ,
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "WEBHOOK_TIMEOUT": "10",
    }
    env.pop("PYTHONPATH", None)
    data.mkdir(parents=True, exist_ok=True)
    arguments = [str(command), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    arguments += ["--port", str(port), "--data-dir", str(data), "--username", USER]
    arguments += ["--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"]
    log = open(data / "label_studio.log", "w")  # noqa: SIM115
    process = subprocess.Popen(arguments, env=env, stdout=log, stderr=subprocess.STDOUT)
    app = LabelStudio(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Label Studio stopped: see {data / 'label_studio.log'}")
            with contextlib.suppress(OSError, RuntimeError):
                if app.api("GET", "/api/projects", timeout=5) is not None:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not start in {start_timeout:.0f} s: {data}")
            time.sleep(1)
        yield app
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install"])
    parser.add_argument("--venv", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=None, help="pip's output goes here")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    path = install(args.venv, args.log)
    print(f"{path} ready in {time.perf_counter() - begin:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
