"""The backend learning from its answers: training beside the server, new versions written
whole and swapped in while predictions go on, a restart that resumes, and a clean stop on
SIGINT and SIGTERM with the journal intact (the real command in a subprocess)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from spacy_bilstm_crf.serve.journal import Journal
from spacy_bilstm_crf.serve.retrain import RetrainSettings, _batches, _example, retrain
from spacy_bilstm_crf.serve.server import Options, close_backend, open_backend
from spacy_bilstm_crf.serve.versions import Versions

pytest.importorskip("starlette")

MODEL = Path(__file__).parent / "fixtures" / "sample_pipeline"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = (
    '<View><Labels name="ner" toName="txt"><Label value="person"/><Label value="location"/>'
    '<Label value="corporation"/></Labels><Text name="txt" value="$text"/></View>'
)
TAUGHT = "Zorblax Quintex hired Mirva Oslund in Kettering ."
GOLD = [(0, 15, "corporation"), (22, 34, "person"), (38, 47, "location")]


def event(annotation_id, task_id, text, regions, action="ANNOTATION_CREATED"):
    result = [
        {
            "type": "labels",
            "from_name": "ner",
            "to_name": "txt",
            "value": {"start": s, "end": e, "labels": [label]},
        }
        for s, e, label in regions
    ]
    return {
        "action": action,
        "project": {"id": 1, "label_config": CONFIG},
        "task": {"id": task_id, "data": {"text": text}},
        "annotation": {
            "id": annotation_id,
            "task": task_id,
            "result": result,
            "updated_at": f"t{annotation_id:04d}",
        },
    }


def wait_for(condition, seconds=120.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return False


def entities(backend, text):
    (found,) = backend.tagger.predict([text])
    return [(start, end, label) for start, end, label, _ in found.entities]


def test_start_training_makes_a_version_that_learned_the_answers(tmp_path):
    backend = open_backend(Options(model=MODEL, work=tmp_path, every=0, steps=80))
    try:
        assert entities(backend, TAUGHT) != GOLD
        for i in range(3):
            backend.webhook(event(i + 1, i + 1, TAUGHT, GOLD))
        assert backend.tagger.version == "bilstm_crf-v0"  # every=0: only when asked
        status, answer = backend.webhook({"action": "START_TRAINING", "project": {"id": 1}})
        assert status == 201 and answer["training"] is True
        assert wait_for(lambda: backend.tagger.version == "bilstm_crf-v1")
        assert entities(backend, TAUGHT) == GOLD
        info = json.loads((tmp_path / "versions" / "000001" / "version.json").read_text())
        assert info["journal_seq"] == 3 and info["answers"] == 3 and info["steps"] == 80
        status, again = backend.webhook({"action": "START_TRAINING", "project": {"id": 1}})
        assert again["training"] is False and "no answers" in again["reason"]
    finally:
        close_backend(backend)
    # A restart serves the newest version and counts nothing as pending.
    backend = open_backend(Options(model=MODEL, work=tmp_path, every=2, steps=5))
    try:
        assert backend.tagger.version == "bilstm_crf-v1" and backend.journal.seq == 3
        assert backend.trainer.pending == 0
        assert entities(backend, TAUGHT) == GOLD
        backend.webhook(event(9, 9, "Paris .", [(0, 5, "location")]))
        assert backend.tagger.version == "bilstm_crf-v1"
        backend.webhook(event(10, 10, "Rome .", [(0, 4, "location")]))  # 2 events: a round
        assert wait_for(lambda: backend.tagger.version == "bilstm_crf-v2")
    finally:
        close_backend(backend)


def test_a_restart_trains_on_answers_journaled_since_the_last_version(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    from spacy_bilstm_crf.serve.protocol import answer_events, read_config

    for i in range(3):
        journal.add_answers(
            "ANNOTATION_CREATED",
            list(
                answer_events("ANNOTATION_CREATED", event(i, i, TAUGHT, GOLD), read_config(CONFIG))
            ),
        )
    journal.close()
    backend = open_backend(Options(model=MODEL, work=tmp_path, every=3, steps=5))
    try:
        assert wait_for(lambda: backend.tagger.version == "bilstm_crf-v1")
    finally:
        close_backend(backend)


def test_predictions_go_on_while_versions_are_swapped(tmp_path):
    backend = open_backend(Options(model=MODEL, work=tmp_path, every=0, steps=5))
    versions = Versions(tmp_path, MODEL)
    base = versions.latest()
    backend.webhook(event(1, 1, TAUGHT, GOLD))
    backend.trainer.ask()
    assert wait_for(lambda: backend.tagger.version == "bilstm_crf-v1")
    trained = versions.latest()
    body = {
        "tasks": [{"id": 1, "data": {"text": TAUGHT}}],
        "label_config": CONFIG,
        "project": "1.1",
    }
    expected = {}
    for version in (base, trained):
        backend.install(version)
        expected[version.name] = backend.predict(body)["results"][0]
    seen, errors, stop = [], [], threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                result = backend.predict(body)["results"][0]
                assert result == expected[result["model_version"]]
                seen.append(result["model_version"])
            except Exception as error:  # collected: the test fails below
                errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(12):
        backend.install((base, trained)[i % 2])
    stop.set()
    for thread in threads:
        thread.join()
    close_backend(backend)
    assert not errors and set(seen) == {"bilstm_crf-v0", "bilstm_crf-v1"}


def test_versions_are_written_whole_and_old_ones_pruned(tmp_path):
    import spacy

    nlp = spacy.load(MODEL)
    (tmp_path / "versions" / ".tmp-000004-123").mkdir(parents=True)  # a crash's leftover
    (tmp_path / "versions" / "000005").mkdir()  # no version.json: never finished
    versions = Versions(tmp_path, MODEL, keep=2)
    assert not list((tmp_path / "versions").glob(".tmp-*"))
    assert versions.latest().number == 0 and versions.latest().path == MODEL
    for number in (1, 2, 3):
        versions.write(nlp, number, {"journal_seq": number})
    assert versions.latest().number == 3 and versions.latest().info["journal_seq"] == 3
    assert versions.names() == ["bilstm_crf-v0", "bilstm_crf-v2", "bilstm_crf-v3"]
    with pytest.raises(FileExistsError):
        versions.write(nlp, 3, {})


def test_a_journal_line_cut_short_is_dropped(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.append([{"action": "X"}, {"action": "Y"}])
    journal.close()
    with (tmp_path / "journal.jsonl").open("a") as file_:
        file_.write('{"seq": 3, "action": "ANNOTATION_CR')
    journal = Journal(tmp_path / "journal.jsonl")
    assert journal.seq == 2
    journal.append([{"action": "Z"}])
    journal.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["X", "Y", "Z"]


def test_labels_the_model_lacks_leave_their_tokens_missing(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    from spacy_bilstm_crf.serve.protocol import answer_events, read_config

    text = "Zorblax Quintex sells Widgets ."
    config = read_config(CONFIG.replace('"corporation"', '"ORG"'))
    body = event(1, 1, text, [(0, 15, "ORG"), (22, 29, "person")])
    body["project"]["label_config"] = CONFIG.replace('"corporation"', '"ORG"')
    journal.add_answers(
        "ANNOTATION_CREATED", list(answer_events("ANNOTATION_CREATED", body, config))
    )
    trained = retrain(MODEL, journal.answers(), None, RetrainSettings(steps=2))
    (doc,) = trained.ingested.docs
    assert [token.ent_iob_ for token in doc] == ["", "", "O", "B", "O"]
    assert [ent.label_ for ent in doc.ents] == ["person"]


def test_batches_mix_answers_and_training_data_by_words():
    import random

    import spacy

    nlp = spacy.blank("en")
    examples = [_example(nlp, nlp.make_doc("one two three four")) for _ in range(10)]
    stream = _batches(examples, 10, random.Random(0))
    sizes = [sum(len(eg.reference) for eg in next(stream)) for _ in range(7)]
    assert sizes[:2] == [12, 12] and all(size in (4, 8, 12) for size in sizes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_stops_the_server_cleanly_with_the_journal_intact(tmp_path, signum, code):
    port = free_port()
    command = [sys.executable, "-m", "spacy_bilstm_crf", "serve", str(MODEL), "--port", str(port)]
    command += ["--work", str(tmp_path / "work"), "--retrain-every", "3", "--steps", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: get(f"http://127.0.0.1:{port}/health") is not None, 120)
        for i in range(3):  # the third starts a (long) training round
            answer = post(f"http://127.0.0.1:{port}/webhook", event(i + 1, i + 1, TAUGHT, GOLD))
            assert answer["journal"] == i + 1
        assert wait_for(lambda: get(f"http://127.0.0.1:{port}/health")["training"], 60)
        body = {"tasks": [{"id": 1, "data": {"text": TAUGHT}}], "label_config": CONFIG}
        begin = time.monotonic()  # training never holds up a prediction
        answer = post(f"http://127.0.0.1:{port}/predict", body)
        assert answer["results"][0]["model_version"] == "bilstm_crf-v0"
        assert time.monotonic() - begin < 10
        assert get(f"http://127.0.0.1:{port}/health")["training"]
        server.send_signal(signum)
        _, errors = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == code, errors
    assert "Traceback" not in errors
    lines = (tmp_path / "work" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["annotation"] for line in lines] == [1, 2, 3]
    assert not list((tmp_path / "work" / "versions").iterdir())  # the round was dropped
