"""The Label Studio ML backend through its HTTP routes (Starlette's test client): the
protocol's payloads as Label Studio 1.23.2 sends them, names and labels from each project's
labeling config, probabilities and scores, the journal written before the answer, bad input
answered with a clear 4xx, basic auth."""

import base64
import json
import logging
import math
import warnings
from pathlib import Path

import pytest

from spacy_bilstm_crf.serve.server import Options, close_backend, open_backend

pytest.importorskip("starlette")
with warnings.catch_warnings():  # starlette 1.x would rather have httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from spacy_bilstm_crf.serve.app import create_app  # noqa: E402

MODEL = Path(__file__).parent / "fixtures" / "sample_pipeline"
CONFIG = (
    '<View><Labels name="ner" toName="txt"><Label value="person"/><Label value="location"/>'
    '<Label value="PER"/></Labels><Text name="txt" value="$sentence"/></View>'
)
OTHER = (
    '<View><Text name="body" value="$text"/><Labels name="tag" toName="body">'
    '<Label value="corporation"/><Label value="product"/></Labels></View>'
)
TEXT = "Barack Obama flew to Paris with John Smith to meet Apple and Google people ."


@pytest.fixture
def backend(tmp_path):
    backend = open_backend(Options(model=MODEL, work=tmp_path / "work", every=0, steps=5))
    yield backend
    close_backend(backend)


@pytest.fixture
def client(backend):
    return TestClient(create_app(backend))


def predict(client, texts, config=CONFIG, field="sentence", project="3.1712345678", **extra):
    tasks = [{"id": i + 1, "data": {field: text}} for i, text in enumerate(texts)]
    body = {"tasks": tasks, "project": project, "label_config": config, **extra}
    return client.post("/predict", json=body)


def annotation_event(annotation_id, task_id, text, regions, action="ANNOTATION_CREATED", **extra):
    result = [
        {
            "id": f"r{i}",
            "type": "labels",
            "from_name": "ner",
            "to_name": "txt",
            "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]},
        }
        for i, (s, e, label) in enumerate(regions)
    ]
    annotation = {"id": annotation_id, "task": task_id, "result": result, "was_cancelled": False}
    annotation.update({"updated_at": f"2026-12-07T10:00:{annotation_id:02d}Z", **extra})
    return {
        "action": action,
        "project": {"id": 3, "label_config": CONFIG},
        "task": {"id": task_id, "data": {"sentence": text}},
        "annotation": annotation,
    }


def test_health_and_setup_report_the_version_and_the_label_mismatches(client, caplog):
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["model_version"] == "bilstm_crf-v0"
    with caplog.at_level(logging.WARNING):
        first = client.post("/setup", json={"project": "3.1712345678", "schema": CONFIG})
        again = client.post("/setup", json={"project": "3.1712345678", "schema": CONFIG})
    assert first.status_code == again.status_code == 200
    answer = first.json()
    assert answer["model_version"] == "bilstm_crf-v0"
    assert answer["labels"]["not_in_model"] == ["PER"]
    assert answer["labels"]["not_in_config"] == ["group", "corporation", "creative-work", "product"]
    assert len(answer["warnings"]) == 2 and again.json() == answer
    logged = [r.getMessage() for r in caplog.records if "never predicted" in r.getMessage()]
    assert len(logged) == 2  # once, not once per call


def test_a_config_with_no_label_of_the_model_is_refused(client):
    config = CONFIG.replace('"person"', '"PERSON"').replace('"location"', '"LOC"')
    answer = client.post("/setup", json={"project": "4.1", "schema": config})
    assert answer.status_code == 422 and "none in common" in answer.json()["error"]
    assert predict(client, [TEXT], config).status_code == 422


def test_predictions_take_the_configs_names_and_carry_probabilities(client, backend):
    results = predict(client, [TEXT, "Paris"]).json()["results"]
    assert len(results) == 2
    docs = [backend.tagger.nlp(text) for text in (TEXT, "Paris")]
    for text, doc, result in zip([TEXT, "Paris"], docs, results):
        assert result["model_version"] == "bilstm_crf-v0"
        expected = [
            (ent.start_char, ent.end_char, ent.label_)
            for ent in doc.ents
            if ent.label_ in ("person", "location")
        ]
        got = [
            (r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
            for r in result["result"]
        ]
        assert got == expected
        for region in result["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == (
                "ner",
                "txt",
                "labels",
            )
            assert (
                region["value"]["text"] == text[region["value"]["start"] : region["value"]["end"]]
            )
            assert 0.0 < region["score"] <= 1.0
        # The score: the best analysis's probability per token, as the component computes it.
        fresh = backend.tagger.docs([text])  # doc.ents above would be presets, fixed
        _, (analysis,) = backend.tagger.pipe.analyze(fresh, "doc", marginals=False, best=True)
        log_prob = analysis.pieces[0].analyses[0][1]
        assert result["score"] == pytest.approx(math.exp(log_prob / len(doc)), abs=1e-6)


def test_region_probabilities_are_the_components_own(client, backend):
    pipe = backend.tagger.pipe
    doc = backend.tagger.nlp(TEXT)
    scores = dict(
        zip(
            [(s.start_char, s.end_char) for s in doc.spans[pipe.cfg["spans_key"]]],
            doc.spans[pipe.cfg["spans_key"]].attrs["scores"],
        )
    )
    (result,) = predict(client, [TEXT]).json()["results"]
    assert result["result"]
    for region in result["result"]:
        key = (region["value"]["start"], region["value"]["end"])
        assert region["score"] == pytest.approx(float(scores[key]), abs=1e-6)


def test_two_projects_are_each_answered_in_their_own_names(client):
    mine = predict(client, [TEXT]).json()["results"][0]["result"]
    theirs = predict(client, [TEXT], OTHER, "text", "9.1").json()["results"][0]["result"]
    assert all(r["from_name"] == "ner" and r["to_name"] == "txt" for r in mine)
    assert all(r["from_name"] == "tag" and r["to_name"] == "body" for r in theirs)
    assert {r["value"]["labels"][0] for r in mine} <= {"person", "location"}
    assert {r["value"]["labels"][0] for r in theirs} <= {"corporation", "product"}


def test_empty_long_and_too_long_texts(client, backend):
    empty, spaces = predict(client, ["", "   "]).json()["results"]
    assert empty == {"result": [], "score": 1.0, "model_version": "bilstm_crf-v0"}
    assert spaces["result"] == []
    long_text = (TEXT + " ") * (100_000 // (len(TEXT) + 1) + 1)
    long_text = long_text[:100_000]
    answer = predict(client, [long_text])
    assert answer.status_code == 200
    regions = answer.json()["results"][0]["result"]
    assert regions and all(
        long_text[r["value"]["start"] : r["value"]["end"]] == r["value"]["text"] for r in regions
    )
    backend.tagger.nlp.max_length = 1_000
    too_long = predict(client, [long_text])
    assert too_long.status_code == 413 and "max_length" in too_long.json()["error"]


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"tasks": "no"}', 422, "'tasks' must be a list"),
        (b'{"tasks": []}', 422, "label_config"),
        (
            json.dumps(
                {"tasks": [{"id": 5, "data": {"text": "x"}}], "label_config": CONFIG}
            ).encode(),
            422,
            "no text in the field 'sentence'",
        ),
        (json.dumps({"tasks": [{"id": 5}], "label_config": CONFIG}).encode(), 422, "no 'data'"),
        (json.dumps({"tasks": [], "label_config": "<View"}).encode(), 422, "not valid XML"),
        (json.dumps({"tasks": [], "label_config": "<View/>"}).encode(), 422, "no <Text"),
    ],
)
def test_bad_predict_requests_get_a_clear_4xx(client, body, status, says):
    answer = client.post("/predict", content=body)
    assert answer.status_code == status
    assert says in answer.json()["error"]


def test_an_empty_batch_and_a_config_from_setup(client):
    assert predict(client, []).json() == {"results": []}
    client.post("/setup", json={"project": "7.1", "schema": OTHER})
    body = {"tasks": [{"id": 1, "data": {"text": TEXT}}], "project": "7.1"}
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200
    assert all(r["from_name"] == "tag" for r in answer.json()["results"][0]["result"])


def test_annotations_are_journaled_before_the_answer(client, backend):
    event = annotation_event(7, 1, TEXT, [(0, 12, "person"), (21, 26, "location")])
    answer = client.post("/webhook", json=event)
    assert answer.status_code == 201
    lines = backend.journal.path.read_text(encoding="utf8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["regions"][0]["start"] == 0
    (found,) = backend.journal.answers()
    assert found.text == TEXT and found.entities == [(0, 12, "person"), (21, 26, "location")]
    # An update replaces it, a later annotation of the same task wins, a cancelled one is no
    # answer, a delete removes.
    client.post(
        "/webhook", json=annotation_event(7, 1, TEXT, [(0, 6, "person")], "ANNOTATION_UPDATED")
    )
    assert [a.entities for a in backend.journal.answers()] == [[(0, 6, "person")]]
    client.post("/webhook", json=annotation_event(8, 1, TEXT, [(32, 42, "person")]))
    assert [a.entities for a in backend.journal.answers()] == [[(32, 42, "person")]]
    client.post("/webhook", json=annotation_event(9, 2, "Paris", [], was_cancelled=True))
    assert len(backend.journal.answers()) == 1
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 3}, "annotations": [{"id": 8}]}
    assert client.post("/webhook", json=deleted).status_code == 201
    assert [a.entities for a in backend.journal.answers()] == [[(0, 6, "person")]]
    assert backend.journal.seq == 5


def test_bad_webhooks_journal_nothing(client, backend):
    assert client.post("/webhook", json={"project": {"id": 3}}).status_code == 400
    ignored = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 3}})
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
    event = annotation_event(7, 1, TEXT, [(0, 12, "person")])
    event["task"]["data"] = {"text": TEXT}
    answer = client.post("/webhook", json=event)
    assert answer.status_code == 422 and "'sentence'" in answer.json()["error"]
    assert backend.journal.seq == 0


def test_a_slip_in_an_answer_skips_that_task_only(client, backend):
    client.post(
        "/webhook", json=annotation_event(1, 1, TEXT, [(0, 12, "person"), (7, 20, "location")])
    )
    client.post("/webhook", json=annotation_event(2, 2, "Paris", [(0, 5, "location")]))
    first, second = backend.journal.answers()
    assert first.reason == "unusable" and "overlap" in first.detail
    assert second.entities == [(0, 5, "location")]


def test_train_journals_only_what_is_new(client, backend):
    event = annotation_event(7, 1, TEXT, [(0, 12, "person")])
    client.post("/webhook", json=event)
    tasks = [{**event["task"], "annotations": [event["annotation"]]}]
    body = {"annotations": tasks, "project": "3.1", "label_config": CONFIG}
    assert client.post("/train", json=body).json()["journaled"] == 0
    changed = {**event["annotation"], "id": 11, "updated_at": "2026-12-08T00:00:00Z"}
    tasks[0]["annotations"].append(changed)
    assert client.post("/train", json=body).json()["journaled"] == 1
    assert backend.journal.seq == 2


def test_basic_auth(backend, caplog):
    client = TestClient(create_app(backend, ("ls", "s3cret-Pass")))
    assert client.get("/health").status_code == 401
    wrong = base64.b64encode(b"ls:nope").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    with caplog.at_level(logging.DEBUG):
        assert client.get("/health", auth=("ls", "s3cret-Pass")).status_code == 200
        assert predict(client, [TEXT]).status_code == 401
    assert "s3cret-Pass" not in caplog.text


def test_annotations_created_in_bulk_are_each_journaled(client, backend):
    first = annotation_event(21, 1, TEXT, [(0, 12, "person")])
    second = annotation_event(22, 2, "Paris", [(0, 5, "location")])
    body = {
        "action": "ANNOTATIONS_CREATED",
        "project": first["project"],
        "annotation": [first["annotation"], second["annotation"]],
        "task": [first["task"], second["task"]],
    }
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 201 and answer.json()["events"] == 2
    assert [a.entities for a in backend.journal.answers()] == [
        [(0, 12, "person")],
        [(0, 5, "location")],
    ]
