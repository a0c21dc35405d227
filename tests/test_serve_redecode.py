"""Corrections re-decoded: with the annotator's regions in `/predict`'s context (Label
Studio's interactive mode), the backend answers the whole text decoded again around them by
the CRF's constrained decoding (`decode_around`): the person's regions as they sent them,
every other region the best under them with its probability given them."""

import math
import warnings
from pathlib import Path

import pytest

from spacy_bilstm_crf.serve.server import Options, close_backend, open_backend

pytest.importorskip("starlette")
interactive = pytest.importorskip("spacy_bilstm_crf.pipeline.interactive")
with warnings.catch_warnings():  # starlette 1.x would rather have httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from spacy_bilstm_crf.serve.app import create_app  # noqa: E402

MODEL = Path(__file__).parent / "fixtures" / "sample_pipeline"
CONFIG = (
    '<View><Labels name="ner" toName="txt"><Label value="person"/><Label value="location"/>'
    '<Label value="corporation"/><Label value="MISC"/></Labels>'
    '<Text name="txt" value="$text"/></View>'
)
TEXT = "Barack Obama went to Paris with John Smith to see Apple ."


@pytest.fixture
def backend(tmp_path):
    backend = open_backend(Options(model=MODEL, work=tmp_path, training=False))
    yield backend
    close_backend(backend)


def person(start, end, label, id_="mine"):
    value = {"start": start, "end": end, "text": TEXT[start:end], "labels": [label]}
    return {"id": id_, "type": "labels", "from_name": "ner", "to_name": "txt", "value": value}


def ask(client, context):
    body = {"tasks": [{"id": 1, "data": {"text": TEXT}}], "project": "1.1"}
    body.update(label_config=CONFIG, params={"context": context})
    return client.post("/predict", json=body)


def spans(result):
    return [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result]


def test_the_whole_text_is_redecoded_around_the_persons_regions(backend):
    client = TestClient(create_app(backend))
    mine = [person(0, 12, "person"), person(32, 42, "person", "second")]
    answer = ask(client, {"result": mine, "outside": [{"start": 13, "end": 17}]})
    assert answer.status_code == 200
    (prediction,) = answer.json()["results"]
    found = interactive.decode_around(
        backend.tagger.nlp,
        TEXT,
        entities=[(0, 12, "person"), (32, 42, "person")],
        outside=[(13, 17)],
        k=1,
    )
    expected = [(e.start_char, e.end_char, e.label) for e in found.entities]
    expected = [e for e in expected if e[2] in ("person", "location", "corporation", "MISC")]
    assert spans(prediction["result"]) == expected
    regions = {(r["value"]["start"], r["value"]["end"]): r for r in prediction["result"]}
    assert regions[(0, 12)] == mine[0] and regions[(32, 42)] == mine[1]  # as the person sent them
    assert not any(start < 17 and end > 13 for start, end, _ in spans(prediction["result"]))
    probabilities = {(e.start_char, e.end_char): e.probability for e in found.entities}
    for (start, end), region in regions.items():
        if region["id"] not in ("mine", "second"):
            assert region["score"] == pytest.approx(probabilities[(start, end)], abs=1e-6)
    tokens = len(backend.tagger.nlp.make_doc(TEXT))
    assert prediction["score"] == pytest.approx(
        math.exp(math.log(found.probability) / tokens), abs=1e-6
    )
    assert prediction["model_version"] == "bilstm_crf-v0"


def test_a_region_of_a_label_the_model_lacks_is_kept_and_blocks_the_model(backend):
    client = TestClient(create_app(backend))
    (prediction,) = ask(client, {"result": [person(50, 55, "MISC")]}).json()["results"]
    assert (50, 55, "MISC") in spans(prediction["result"])
    assert not any(
        s < 55 and e > 50 and label != "MISC" for s, e, label in spans(prediction["result"])
    )


def test_fixes_that_cannot_hold_together_are_a_422(backend):
    client = TestClient(create_app(backend))
    overlapping = {"result": [person(0, 12, "person"), person(7, 17, "location", "b")]}
    answer = ask(client, overlapping)
    assert answer.status_code == 422 and "cannot all hold" in answer.json()["error"]
    outside = ask(
        client, {"result": [person(0, 12, "person")], "outside": [{"start": 5, "end": 9}]}
    )
    assert outside.status_code == 422
    off_text = ask(client, {"result": [person(0, 500, "person")]})
    assert off_text.status_code == 422 and "inside the text" in off_text.json()["error"]
    two_tasks = {
        "tasks": [{"id": 1, "data": {"text": TEXT}}, {"id": 2, "data": {"text": TEXT}}],
        "label_config": CONFIG,
        "params": {"context": {"result": [person(0, 12, "person")]}},
    }
    assert client.post("/predict", json=two_tasks).status_code == 422


def test_an_empty_context_is_a_plain_prediction(backend):
    client = TestClient(create_app(backend))
    plain = ask(client, None).json()
    assert ask(client, {}).json() == plain == ask(client, {"result": []}).json()
