"""What Label Studio 1.23.2 and doccano 1.8.4 really exported after a person answered
`select`'s tasks (`../shared/data/tool_exports`), read back by `ingest`: exactly the entities
submitted, nothing a person did not review, and a person's slips snapped or skipped alone."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.tokens import DocBin

from spacy_bilstm_crf.active.formats import FormatError, read_answers, sent_labels, to_record
from spacy_bilstm_crf.active.ingest import ingest
from spacy_bilstm_crf.active.label_config import (
    LabelConfig,
    LabelConfigError,
    default_config,
    parse_label_config,
    read_label_config,
)
from spacy_bilstm_crf.active.select import select
from spacy_bilstm_crf.annotate.rows import Row

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "fixtures" / "sample_pipeline"
EXPORTS = REPO.parent / "shared" / "data" / "tool_exports"
STUDIO = EXPORTS / "label_studio_1.23.2"
DOCCANO = EXPORTS / "doccano_1.8.4"
needs_exports = pytest.mark.skipif(
    not EXPORTS.exists(), reason="../shared/data/tool_exports is absent"
)
TWEET_CONFIG = """<View>
  <Text name="tweet" value="$content"/>
  <Labels name="ner" toName="tweet">
    <Label value="person" background="red"/>
    <Label value="location"/>
    <Label value="EVENT"/>
  </Labels>
</View>"""


@pytest.fixture(scope="module")
def nlp() -> spacy.Language:
    return spacy.load(MODEL)


def studio_expected(unit: str) -> dict[str, dict]:
    """Label Studio's expected answers of one unit's project, by the task's text."""
    expected = json.loads((STUDIO / "expected.json").read_text())
    return {item["text"]: item for item in expected.values() if item["unit"] == unit}


def ents_by_text(docs: list) -> dict[str, list[list]]:
    return {doc.text: [[e.start_char, e.end_char, e.label_] for e in doc.ents] for doc in docs}


EXPORT_FILES = [
    (unit, f"export_{unit}_{kind}.json")
    for unit in ("sentence", "span", "doc")
    for kind in ("JSON", "JSON_MIN")
] + [
    ("sentence", "export_sentence_JSON_all.json"),
    ("doc", "edited_subtoken_export.json"),
    ("doc", "edited_trailingspace_export.json"),
]


@needs_exports
@pytest.mark.parametrize(("unit", "name"), EXPORT_FILES)
def test_label_studio_exports_ingest_to_exactly_what_was_submitted(
    nlp: spacy.Language, unit: str, name: str
) -> None:
    config = read_label_config(STUDIO / f"tasks_{unit}.label_config.xml")
    result = ingest(nlp, read_answers(STUDIO / name, "label-studio", config=config))
    expected = studio_expected(unit)
    answered = {text: item for text, item in expected.items() if item["entities"] is not None}
    assert ents_by_text(result.docs) == {text: item["entities"] for text, item in answered.items()}
    cancelled = sum(item["cancelled"] for item in expected.values())
    if "JSON_MIN" in name:  # Label Studio leaves cancelled annotations out of JSON_MIN
        assert not result.skipped
    else:
        assert result.skipped["cancelled"] == cancelled
    if name.endswith("_all.json"):  # unanswered tasks too: skipped, never trained on
        assert result.skipped["not annotated"] == 20 - len(expected)
    tasks = {
        t["data"]["text"]: t["data"]
        for t in json.loads((STUDIO / f"tasks_{unit}.json").read_text())
    }
    for doc in result.docs:  # the reviewed region labelled, O included; the rest missing
        data = tasks[doc.text]
        for token in doc:
            inside = (
                token.idx < data["review_end"] and token.idx + len(token) > data["review_start"]
            )
            in_entity = any(e.start <= token.i < e.end for e in doc.ents)
            assert (token.ent_iob_ != "") == (inside or in_entity), (doc.text, token.text)


@needs_exports
@pytest.mark.parametrize(
    "name", ["edited_subtoken_export.json", "edited_trailingspace_export.json"]
)
def test_a_region_off_the_tokens_is_snapped_and_said(nlp: spacy.Language, name: str) -> None:
    result = ingest(nlp, read_answers(STUDIO / name, "label-studio"))
    ((where, before, after),) = result.snapped
    assert (
        "149@0-58" in where and before.startswith("@joshHnumber1f") and after == "@joshHnumber1fan"
    )
    assert "1 regions snapped" in str(result)


@needs_exports
def test_doccano_approved_export_ingests_exactly_what_was_reviewed(nlp: spacy.Language) -> None:
    expected = json.loads((DOCCANO / "expected.json").read_text())
    sent = sent_labels(DOCCANO / "tasks_sentence_doccano.jsonl")
    result = ingest(nlp, read_answers(DOCCANO / "export_approved_True.jsonl", "doccano", sent=sent))
    reviewed = {text: ents for text, ents in expected.items() if ents is not None}
    assert ents_by_text(result.docs) == reviewed


@needs_exports
def test_doccano_plain_export_is_refused_naming_the_right_one(nlp: spacy.Language) -> None:
    sent = sent_labels(DOCCANO / "tasks_sentence_doccano.jsonl")
    with pytest.raises(FormatError, match="Export only approved documents"):
        ingest(nlp, read_answers(DOCCANO / "export_approved_False.jsonl", "doccano", sent=sent))
    # Asked to trust it, every example is read: the person says they approved them all.
    trusted = read_answers(
        DOCCANO / "export_approved_False.jsonl", "doccano", sent=sent, all_approved=True
    )
    assert len(ingest(nlp, trusted).docs) == 20


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spacy_bilstm_crf", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@needs_exports
@pytest.mark.parametrize(
    ("tool", "tasks", "export"),
    [
        ("label-studio", STUDIO / "tasks_doc.json", STUDIO / "edited_subtoken_export.json"),
        ("label-studio", STUDIO / "tasks_span.json", STUDIO / "export_span_JSON_MIN.json"),
        (
            "doccano",
            DOCCANO / "tasks_sentence_doccano.jsonl",
            DOCCANO / "export_approved_True.jsonl",
        ),
        (
            "doccano",
            DOCCANO / "tasks_sentence_doccano.jsonl",
            DOCCANO / "export_approved_False.jsonl",
        ),
    ],
)
def test_ingest_command_reads_a_round_folder(
    tmp_path: Path, tool: str, tasks: Path, export: Path
) -> None:
    folder = tmp_path / "round-1"
    folder.mkdir()
    suffix = ".json" if tool == "label-studio" else ".jsonl"
    shutil.copy(tasks, folder / f"tasks{suffix}")
    shutil.copy(export, folder / f"answers{suffix}")
    output = tmp_path / "round-1.spacy"
    result = run_cli("ingest", folder, output, "--format", tool, "--model", MODEL, cwd=tmp_path)
    if "approved_False" in export.name:
        assert result.returncode == 2 and not output.exists()
        assert "Export only approved documents" in result.stderr
        assert "Traceback" not in result.stderr
        return
    assert result.returncode == 0, result.stderr
    docs = list(DocBin().from_disk(output).get_docs(spacy.blank("en").vocab))
    assert docs and f"-> {len(docs)} docs" in result.stdout
    if "subtoken" in export.name:
        assert "snapped:" in result.stderr and "'@joshHnumber1fan'" in result.stderr


def test_overlapping_regions_skip_their_task_only(nlp: spacy.Language, tmp_path: Path) -> None:
    tasks = [
        {
            "id": i,
            "data": {"text": text},
            "annotations": [{"id": i, "was_cancelled": False, "result": result}],
        }
        for i, (text, result) in enumerate(
            [
                ("Ann met Bob", [_region(0, 3, "person"), _region(0, 7, "person")]),
                ("Rome is big", [_region(0, 4, "location")]),
                ("Paris too", [_region(0, 5, "location", labels=2)]),
            ]
        )
    ]
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(tasks))
    result = ingest(nlp, read_answers(path, "label-studio"))
    assert ents_by_text(result.docs) == {"Rome is big": [[0, 4, "location"]]}
    assert result.skipped["unusable"] == 2
    details = [problem.detail for problem in result.problems]
    assert any("overlap" in detail for detail in details)
    assert any("2 labels" in detail for detail in details)


def _region(start: int, end: int, label: str, labels: int = 1) -> dict:
    return {
        "from_name": "label",
        "to_name": "text",
        "type": "labels",
        "value": {"start": start, "end": end, "labels": [label] * labels},
    }


def test_label_configs_are_read_with_their_own_names() -> None:
    config = parse_label_config(TWEET_CONFIG)
    assert config == LabelConfig("ner", "tweet", "content", ("person", "location", "EVENT"))
    assert config.differences(["person", "group"]) == (["group"], ["location", "EVENT"])
    written = parse_label_config(default_config(["PER", "LOC"]))
    assert written == LabelConfig("label", "text", "text", ("PER", "LOC"))
    assert 'granularity="word"' in default_config(["PER"]) and "$review" not in default_config(
        ["PER"]
    )
    assert "$review" in default_config(["PER"], review_header=True)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<View><Text name='t' value='$x'/>", "not valid XML"),
        ("<View><Labels name='l' toName='t'/></View>", "no <Text"),
        ("<View><Text name='t' value='$x'/><Labels name='l' toName='u'/></View>", "point at"),
        (
            "<View><Text name='t' value='$x'/><Labels name='a' toName='t'/>"
            "<Labels name='b' toName='t'/></View>",
            "several <Labels>",
        ),
    ],
)
def test_bad_label_configs_are_errors_that_say_why(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_tasks_carry_a_users_config_names_and_read_back(
    nlp: spacy.Language, tmp_path: Path
) -> None:
    config = parse_label_config(TWEET_CONFIG)
    rows = [Row(0, "Ann flew to Paris with Bob .", None)]
    (task,) = select(nlp, rows, unit="doc", n=1).tasks
    record = to_record(task, "label-studio", config)
    assert record["data"]["content"] == task.text and "text" not in record["data"]
    for item in record["predictions"][0]["result"]:
        assert (item["from_name"], item["to_name"]) == ("ner", "tweet")
        assert item["value"]["labels"][0] in config.labels  # others left out
    answer = {
        "id": 1,
        "data": record["data"],
        "annotations": [
            {
                "id": 1,
                "was_cancelled": False,
                "result": [
                    {
                        "from_name": "ner",
                        "to_name": "tweet",
                        "type": "labels",
                        "value": {"start": 0, "end": 3, "text": "Ann", "labels": ["person"]},
                    }
                ],
            }
        ],
    }
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer]))
    for given in (None, config):  # the text field from the results' to_name, or the config
        (doc,) = ingest(nlp, read_answers(path, "label-studio", config=given)).docs
        assert doc.text == task.text and [(e.text, e.label_) for e in doc.ents] == [
            ("Ann", "person")
        ]
    minimal = {
        **record["data"],
        "id": 1,
        "annotation_id": 1,
        "ner": [answer["annotations"][0]["result"][0]["value"]],
    }
    path.write_text(json.dumps([minimal]))
    (doc,) = ingest(nlp, read_answers(path, "label-studio")).docs
    assert [(e.text, e.label_) for e in doc.ents] == [("Ann", "person")]


def test_select_names_tasks_from_the_config_and_reports_label_differences(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    names = ["Ann", "Bob", "Eve", "Tom", "Kim"]
    srsly.write_jsonl(
        pool, [{"id": i, "text": f"{n} went to Paris ."} for i, n in enumerate(names)]
    )
    config = tmp_path / "project.xml"
    config.write_text(TWEET_CONFIG)
    out = tmp_path / "round-1"
    result = run_cli(
        "select",
        MODEL,
        pool,
        out,
        "--n",
        "3",
        "--format",
        "label-studio",
        "--label-config",
        config,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 3 and all("content" in task["data"] for task in tasks)
    model_labels = spacy.load(MODEL).get_pipe("ner").labels
    lacking = [label for label in model_labels if label not in ("person", "location")]
    assert f"lacks the model's labels {lacking}" in result.stderr
    assert "does not know the config's labels ['EVENT']" in result.stderr
    assert not (out / "tasks.label_config.xml").exists()  # the user's config is the one
