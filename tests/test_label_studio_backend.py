"""The backend inside a real Label Studio 1.23.2, installed from the package index into a
cached venv of its own (`benchmarks/scripts/label_studio_app.py`): a project with its own
tag names, the backend connected through Label Studio's API with basic auth, predictions
retrieved through Label Studio, answers submitted through it (its webhooks reach the
backend, which journals them and retrains), then predictions from the newer version; the
project's "Start training" reaches the backend too."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "sample_pipeline"
EXPORTS = ROOT.parent / "shared" / "data" / "tool_exports" / "label_studio_1.23.2"
sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
label_studio_app = pytest.importorskip("label_studio_app")
pytest.importorskip("starlette")
pytestmark = pytest.mark.xdist_group("label_studio")  # one Label Studio for the module

CONFIG = """<View>
  <Text name="content" value="$sentence" granularity="word"/>
  <Labels name="entities" toName="content">
    <Label value="person"/><Label value="location"/><Label value="corporation"/>
    <Label value="product"/><Label value="group"/><Label value="creative-work"/>
  </Labels>
</View>"""
AUTHORIZATION = "Basic " + base64.b64encode(b"ls:correct-horse-9").decode()


def texts() -> list[str]:
    """WNUT-17 sentences (CC BY 4.0) from the tool exports, else the shipped sample."""
    tasks = EXPORTS / "tasks_sentence.json"
    if tasks.is_file():
        return [task["data"]["text"] for task in json.loads(tasks.read_text())][:8]
    return ["Barack Obama flew to Paris .", "Apple sells phones in London .", "I love NYC ."] * 2


def region(text: str, start: int, end: int, label: str) -> dict:
    value = {"start": start, "end": end, "text": text[start:end], "labels": [label]}
    return {"type": "labels", "from_name": "entities", "to_name": "content", "value": value}


def health(url: str) -> dict | None:
    request = urllib.request.Request(f"{url}/health")
    request.add_header("Authorization", AUTHORIZATION)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def wait_for(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    command = label_studio_app.install()
    with label_studio_app.running(tmp_path_factory.mktemp("label_studio"), command) as app:
        yield app


@pytest.fixture
def backend(tmp_path):
    port = label_studio_app.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="correct-horse-9")
    command = [sys.executable, "-m", "spacy_bilstm_crf", "serve", str(MODEL), "--port", str(port)]
    command += ["--work", str(tmp_path / "work"), "--retrain-every", "3", "--steps", "30"]
    log = open(tmp_path / "backend.log", "w")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: health(url) is not None, 120), (
            tmp_path / "backend.log"
        ).read_text()
        yield url, tmp_path / "work"
    finally:
        process.terminate()
        process.wait(60)
        log.close()
    assert process.returncode == 0, (tmp_path / "backend.log").read_text()
    assert "correct-horse-9" not in (tmp_path / "backend.log").read_text()


def test_label_studio_predicts_and_learns_through_the_backend(label_studio, backend):
    url, work = backend
    project = label_studio.create_project("bilstm-crf backend", CONFIG)
    auth = {
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": "ls",
        "basic_auth_pass": "correct-horse-9",
    }
    connected = label_studio.connect_backend(project, url, **auth)
    assert connected["state"] == "CO", connected
    assert connected["model_version"] == "bilstm_crf-v0"
    # Label Studio sends the basic auth with its backend calls, not with the webhook it made
    # for the backend: that one gets the header in the project's webhook settings.
    label_studio.webhook_headers(project, url, {"Authorization": AUTHORIZATION})
    sentences = texts()
    ids = label_studio.import_tasks(project, [{"sentence": text} for text in sentences])
    label_studio.retrieve_predictions(project, ids)
    first = {task: label_studio.predictions(task) for task in ids}
    for task, text in zip(ids, sentences):
        (prediction,) = first[task]
        assert prediction["model_version"] == "bilstm_crf-v0"
        assert 0.0 < prediction["score"] <= 1.0
        for item in prediction["result"]:
            assert (item["from_name"], item["to_name"]) == ("entities", "content")
            value = item["value"]
            assert text[value["start"] : value["end"]] == value["text"]
            assert 0.0 < item["score"] <= 1.0
    # Three answers through Label Studio: its webhooks reach the backend, which journals
    # them and, three being its --retrain-every, trains a new version.
    answers = [(0, [(0, 4, "person")]), (1, []), (2, [(0, 3, "location")])]
    for index, entities in answers:
        text = sentences[index]
        result = [region(text, s, e, label) for s, e, label in entities if e <= len(text)]
        label_studio.annotate(ids[index], result)
    journal = (work / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["task"] for line in journal] == [ids[0], ids[1], ids[2]]
    assert wait_for(lambda: health(url)["model_version"] == "bilstm_crf-v1", 300)
    label_studio.retrieve_predictions(project, ids)
    for task in ids:
        versions = [p["model_version"] for p in label_studio.predictions(task)]
        assert sorted(versions) == ["bilstm_crf-v0", "bilstm_crf-v1"]
    assert label_studio.api("GET", f"/api/ml/{connected['id']}")["model_version"] == "bilstm_crf-v1"
    # One more answer, then the project's "Start training": the backend trains now.
    label_studio.annotate(ids[3], [])
    label_studio.start_training(connected["id"])
    assert wait_for(lambda: health(url)["model_version"] == "bilstm_crf-v2", 300)
    info = json.loads((work / "versions" / "000002" / "version.json").read_text())
    assert info["journal_seq"] == 4 and info["answers"] == 4


def test_a_persons_region_comes_back_with_the_text_redecoded_around_it(label_studio, backend):
    """What the editor asks when a person draws a region with auto-annotation on."""
    pytest.importorskip("spacy_bilstm_crf.pipeline.interactive")
    url, _ = backend
    project = label_studio.create_project("bilstm-crf interactive", CONFIG)
    auth = {
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": "ls",
        "basic_auth_pass": "correct-horse-9",
    }
    connected = label_studio.connect_backend(project, url, interactive=True, **auth)
    text = "Barack Obama went to Paris with John Smith ."
    (task,) = label_studio.import_tasks(project, [{"sentence": text}])
    drawn = {**region(text, 0, 12, "person"), "id": "drawn-1"}
    answer = label_studio.interactive(connected["id"], task, {"result": [drawn]})
    assert "errors" not in answer, answer
    result = answer["data"]["result"]
    assert drawn in result  # as the person drew it
    assert answer["data"]["model_version"] == "bilstm_crf-v0"
    for item in result:
        value = item["value"]
        assert text[value["start"] : value["end"]] == value["text"]
        assert item == drawn or not (value["start"] < 12 and value["end"] > 0)
