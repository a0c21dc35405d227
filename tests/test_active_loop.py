"""The annotation loop's files: tasks as the tools document them, their exports read back,
ingest into partial labels that `spacy train` learns from, and the commands around them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.tokens import DocBin

from spacy_bilstm_crf.active.formats import (
    FormatError,
    read_answers,
    read_task_ids,
    to_record,
    write_tasks,
)
from spacy_bilstm_crf.active.ingest import ingest
from spacy_bilstm_crf.active.select import select
from spacy_bilstm_crf.active.tasks import Entity, Task, doc_tokens
from spacy_bilstm_crf.active.uncertainty import same_text
from spacy_bilstm_crf.annotate.rows import Row

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
MODEL = FIXTURES / "sample_pipeline"
# Offsets are characters of the original text: an emoji (two UTF-16 units), CR LF, two spaces.
ODD = "Tom went to 😀 Paris .\r\nThen  to New York with Anna !"


@pytest.fixture(scope="module")
def nlp() -> spacy.Language:
    return spacy.load(MODEL)


def task_for(nlp: spacy.Language, text: str, ents: list[tuple[int, int, str]]) -> Task:
    """A task over the whole text with these entities (character offsets), scores 0.5."""
    doc = nlp.make_doc(text)
    entities = []
    for start, end, label in ents:
        span = doc.char_span(start, end)
        entities.append(Entity(start, end, span.start, span.end, label, 0.5))
    return Task("7@0-9", text, doc_tokens(doc), entities, (0, len(text)), 0.8, 0.2, 7)


def test_prodigy_tasks_match_the_documented_example(nlp: spacy.Language) -> None:
    # prodi.gy/docs/api-interfaces, ner_manual: "MacBook Pro" is tokens 5 to 6, token_end
    # inclusive.
    text = "First look at the new MacBook Pro"
    record = to_record(task_for(nlp, text, [(22, 33, "PRODUCT")]), "prodigy")
    assert record["text"] == text
    words = ["First", "look", "at", "the", "new", "MacBook", "Pro"]
    starts = [0, 6, 11, 14, 18, 22, 30]
    assert record["tokens"] == [
        {"text": w, "start": s, "end": s + len(w), "id": i, "ws": i < 6}
        for i, (w, s) in enumerate(zip(words, starts))
    ]
    (span,) = record["spans"]
    assert {k: span[k] for k in ("start", "end", "label", "token_start", "token_end")} == {
        "start": 22,
        "end": 33,
        "label": "PRODUCT",
        "token_start": 5,
        "token_end": 6,
    }
    assert record["meta"]["score"] == 0.8 and record["meta"]["task_id"] == "7@0-9"
    assert "_input_hash" not in record and "_task_hash" not in record  # Prodigy sets them


def test_label_studio_tasks_match_the_documented_example(nlp: spacy.Language) -> None:
    # labelstud.io/guide/predictions, "Import span pre-annotations for text".
    text = "All that changed when he was 27 and he came to Jerusalem."
    record = to_record(
        task_for(nlp, text, [(29, 31, "Date"), (47, 56, "Location")]), "label-studio"
    )
    assert record["data"]["text"] == text
    (prediction,) = record["predictions"]
    assert prediction["score"] == 0.2  # the confidence: lowest first shows the least certain
    first, second = prediction["result"]
    assert first["from_name"] == "label" and first["to_name"] == "text"
    assert first["type"] == "labels" and first["score"] == 0.5
    assert first["value"] == {"start": 29, "end": 31, "text": "27", "labels": ["Date"]}
    assert second["value"] == {"start": 47, "end": 56, "text": "Jerusalem", "labels": ["Location"]}
    assert first["id"] != second["id"]


def test_doccano_tasks_match_the_documented_example(nlp: spacy.Language) -> None:
    # doccano's sequence-labelling example: [[0, 2, "ORG"], [11, 17, "MISC"]].
    text = "EU rejects German call to boycott British lamb."
    record = to_record(task_for(nlp, text, [(0, 2, "ORG"), (11, 17, "MISC")]), "doccano")
    assert record["text"] == text and record["label"] == [[0, 2, "ORG"], [11, 17, "MISC"]]
    assert record["task_id"] == "7@0-9" and "id" not in record  # doccano writes its own id


@pytest.mark.parametrize("unit", ["doc", "sentence", "span"])
def test_selected_tasks_have_offsets_on_the_original_text(nlp: spacy.Language, unit: str) -> None:
    rows = [Row(i, ODD, None) for i in range(3)]
    selection = select(nlp, rows, unit=unit, strategy="lc", n=20)
    assert selection.tasks
    for task in selection.tasks:
        assert ODD[task.offset : task.offset + len(task.text)] == task.text
        assert task.text[slice(*task.review)].strip() == task.text[slice(*task.review)]
        start, end = task.id.rpartition("@")[2].split("-")
        assert ODD[int(start) : int(end)] == task.text[slice(*task.review)]
        for fmt in ("prodigy", "label-studio", "doccano", "jsonl"):
            record = to_record(task, fmt)
            for start, end, label in _spans(record, fmt):
                span_text = task.text[start:end]
                assert span_text and span_text == span_text.strip(), (fmt, span_text)
                assert label in nlp.get_pipe("ner").labels


def test_a_repeated_text_gives_one_task_the_most_uncertain(nlp: spacy.Language) -> None:
    texts = ["PARIS 1996-08-30", "Paris 1996-08-31", "Paris 1997-01-02", "Tom went to Paris ."]
    rows = [Row(i, text, None) for i, text in enumerate(texts * 2)]
    every = select(nlp, rows, unit="doc", strategy="mnlp", n=8, keep_duplicates=True)
    assert len(every.tasks) == 8 and every.duplicates == 0
    best: dict[str, float] = {}
    for task in every.tasks:
        key = same_text(task.text)
        best[key] = max(best.get(key, -1.0), task.score)
    chosen = select(nlp, rows, unit="doc", strategy="mnlp", n=8)
    assert chosen.duplicates == 6 and "6 repeats of a text passed over" in str(chosen)
    assert sorted(same_text(task.text) for task in chosen.tasks) == sorted(best)
    for task in chosen.tasks:
        assert task.score == best[same_text(task.text)]
    assert len(select(nlp, rows, unit="span", strategy="lc", n=8).tasks) <= len(
        select(nlp, rows, unit="span", strategy="lc", n=8, keep_duplicates=True).tasks
    )


def _spans(record: dict, fmt: str) -> list[tuple[int, int, str]]:
    if fmt == "prodigy":
        return [(s["start"], s["end"], s["label"]) for s in record["spans"]]
    if fmt == "label-studio":
        result = record["predictions"][0]["result"]
        return [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result]
    if fmt == "doccano":
        return [tuple(span) for span in record["label"]]
    return [(e["start"], e["end"], e["label"]) for e in record["entities"]]


def answered(record: dict, fmt: str, gold: list[tuple[int, int, str]], answer: str) -> dict:
    """The exported record of a reviewed task: the tool's own answer fields, `gold` entities."""
    record = json.loads(json.dumps(record))
    if fmt == "prodigy":
        record["spans"] = [{"start": s, "end": e, "label": label} for s, e, label in gold]
        record.update(answer=answer, _view_id="ner_manual", _timestamp=1700000000)
    elif fmt == "label-studio":
        result = [
            {
                "id": f"r{i}",
                "from_name": "label",
                "to_name": "text",
                "type": "labels",
                "origin": "manual",
                "value": {"start": s, "end": e, "labels": [label]},
            }
            for i, (s, e, label) in enumerate(gold)
        ]
        cancelled = answer != "accept"
        record["annotations"] = [{"id": 9, "result": result, "was_cancelled": cancelled}]
        record["id"] = 1
    elif fmt == "doccano":
        record["label"] = [[s, e, label] for s, e, label in gold]
        record["Comments"] = []
    else:
        record["entities"] = [{"start": s, "end": e, "label": label} for s, e, label in gold]
        record["answer"] = answer
    return record


@pytest.mark.parametrize("fmt", ["prodigy", "label-studio", "doccano", "jsonl"])
def test_ingest_round_trip_labels_the_reviewed_tokens_only(
    nlp: spacy.Language, fmt: str, tmp_path: Path
) -> None:
    other = "Ann met Bob and Eve in Rome today . They went to Paris , Berlin and Oslo ."
    rows = [Row(0, ODD, None), Row(1, other, None)]  # regions of a sentence make one doc
    tasks = select(nlp, rows, unit="span", strategy="lc", n=50).tasks
    assert len(tasks) >= 3
    for task in tasks:  # the fixture's model is unsure of whole sentences: review less
        if len(task.tokens) > 3:
            middle = task.tokens[len(task.tokens) // 2 - 1]
            task.review = (task.review[0], middle[2])
    records, expected = [], []
    for i, task in enumerate(tasks):
        start, end = task.review
        words = re.finditer(r"\w+", task.text[start:end])
        gold = [(start + m.start(), start + m.end(), "person") for m in list(words)[:1]]
        answer = "reject" if i == len(tasks) - 1 and fmt != "doccano" else "accept"
        records.append(answered(to_record(task, fmt), fmt, gold, answer))
        if answer == "accept":
            expected.append((task, gold))
    path = tmp_path / ("answers.json" if fmt == "label-studio" else "answers.jsonl")
    if fmt == "label-studio":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        srsly.write_jsonl(path, records)
    result = ingest(nlp, read_answers(path, fmt))
    assert sum(result.skipped.values()) == (0 if fmt == "doccano" else 1)
    assert result.answers == len(expected)
    labelled = {}
    for doc in result.docs:
        labelled.setdefault(doc.text, []).append(doc)
    for task, gold in expected:
        (doc,) = labelled[task.text]
        for token in doc:
            in_review = token.idx < task.review[1] and token.idx + len(token) > task.review[0]
            others = [t for t, _ in expected if t.text == task.text and t is not task]
            if in_review:
                assert token.ent_iob_ in ("B", "I", "O"), token.text
            elif not any(
                token.idx < t.review[1] and token.idx + len(token) > t.review[0] for t in others
            ):
                assert token.ent_iob_ == "", token.text  # missing: not reviewed
        spans = {(e.start_char, e.end_char, e.label_) for e in doc.ents}
        assert set(gold) <= spans
    assert 0 < result.reviewed_tokens < result.reviewed_tokens + result.missing_tokens


def test_documented_exports_read_back(tmp_path: Path) -> None:
    prodigy = tmp_path / "prodigy.jsonl"
    prodigy.write_text(
        '{"text":"Uber\\u2019s Lesson: Silicon Valley","_input_hash":1886699658,'
        '"_task_hash":-1952856502,"spans":[{"start":0,"end":4,"token_start":0,"token_end":0,'
        '"label":"ORG"},{"start":15,"end":29,"token_start":4,"token_end":5,"label":"LOC"}],'
        '"_view_id":"ner_manual","answer":"accept"}\n'
        '{"text":"No","spans":[],"answer":"ignore"}\n'
    )
    accepted, ignored = read_answers(prodigy, "prodigy")
    assert accepted.entities == [(0, 4, "ORG"), (15, 29, "LOC")]
    assert accepted.review == (0, 29) and ignored.reason == "ignore"
    studio = tmp_path / "studio.json"
    studio.write_text(
        json.dumps(
            [
                {
                    "id": 1,
                    "data": {"text": "Ann in Rome"},
                    "annotations": [
                        {"id": 1, "was_cancelled": True, "result": []},
                        {
                            "id": 2,
                            "was_cancelled": False,
                            "result": [
                                {
                                    "value": {"start": 7, "end": 11, "labels": ["LOC"]},
                                    "id": "x",
                                    "from_name": "label",
                                    "to_name": "text",
                                    "type": "labels",
                                    "origin": "manual",
                                }
                            ],
                        },
                    ],
                },
                {"id": 2, "data": {"text": "Skipped"}, "annotations": []},
            ]
        )
    )
    answer, skipped = read_answers(studio, "label-studio")
    assert answer.entities == [(7, 11, "LOC")] and skipped.reason == "not annotated"
    doccano = tmp_path / "doccano.jsonl"
    doccano.write_text(
        '{"id": 3, "text": "EU rejects German call", "label": [[0, 2, "ORG"], [11, 17, "MISC"]],'
        ' "Comments": []}\n'
        '{"id": 4, "data": "Old export", "label": [[0, 3, "X"]]}\n'
    )
    new, old = read_answers(doccano, "doccano")
    assert new.entities == [(0, 2, "ORG"), (11, 17, "MISC")] and old.text == "Old export"


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("prodigy", '{"text": "a", "answer": "accept"}\n{oops\n', "line 2: not valid JSON"),
        (
            "prodigy",
            '{"text": "ab", "spans": [{"start": 0, "end": 9, "label": "X"}], "answer": "accept"}\n',
            "line 1: entity 0-9 is not inside the text",
        ),
        ("prodigy", '{"text": "ab", "answer": "maybe"}\n', "line 1: 'answer' must be"),
        (
            "prodigy",
            '{"text": "a b", "spans": [{"start": 0, "end": 1, "label": "X", '
            '"answer": "reject"}], "answer": "accept", "_view_id": "ner"}\n',
            "binary answer",
        ),
        ("doccano", '{"label": [[0, 1, "X"]]}\n', "line 1: the task has no text"),
        ("doccano", '{"text": "abc", "label": [[0, 1]]}\n', "must be [start, end, LABEL]"),
        ("label-studio", '[{"data": {"text": "ab"}, "annotations": []}, 3]', "task 2:"),
        ("label-studio", '[{"text": "ab", "label": []}]', "export JSON or JSON_MIN"),
    ],
)
def test_malformed_exports_are_errors_naming_the_place(
    tmp_path: Path, fmt: str, content: str, message: str
) -> None:
    path = tmp_path / "export.json"
    path.write_text(content)
    with pytest.raises(FormatError, match=re.escape(message)):
        list(read_answers(path, fmt))


def test_an_entity_off_the_token_boundaries_is_snapped_to_them(nlp: spacy.Language, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "Paris is big", "label": [[0, 3, "LOC"], [8, 10, "LOC"]]}\n')
    result = ingest(nlp, read_answers(path, "doccano"))
    (doc,) = result.docs
    assert [(e.text, e.label_) for e in doc.ents] == [("Paris", "LOC"), ("big", "LOC")]
    assert [(before, after) for _, before, after in result.snapped] == [
        ("Par", "Paris"),
        (" b", "big"),
    ]


def test_task_ids_read_from_any_format(nlp: spacy.Language, tmp_path: Path) -> None:
    task = task_for(nlp, "Ann in Rome", [])
    for fmt in ("prodigy", "doccano", "jsonl"):
        path = tmp_path / f"{fmt}.jsonl"
        write_tasks([task], path, fmt)
        assert read_task_ids(path) == ["7@0-9"]
    path = tmp_path / "studio.json"
    write_tasks([task], path, "label-studio")
    assert isinstance(json.loads(path.read_text()), list)
    assert read_task_ids(path) == ["7@0-9"]


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "spacy_bilstm_crf", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_select_and_ingest_commands_round_after_round(tmp_path: Path) -> None:
    texts = srsly.read_json(FIXTURES / "saved_predictions.json")["texts"][:60]
    pool = tmp_path / "pool.jsonl"
    srsly.write_jsonl(pool, [{"id": f"t{i}", "text": text} for i, text in enumerate(texts)])
    rounds = tmp_path / "annotation"
    first = rounds / "round-1" / "tasks.jsonl"
    result = run_cli(
        "select",
        MODEL,
        pool,
        first,
        "--tokens",
        "120",
        "--unit",
        "span",
        "--format",
        "prodigy",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    tasks = list(srsly.read_jsonl(first))
    assert tasks and sum(t["meta"]["review_end"] > t["meta"]["review_start"] for t in tasks)
    second = rounds / "round-2" / "tasks.jsonl"
    result = run_cli(
        "select",
        MODEL,
        pool,
        second,
        "--tokens",
        "120",
        "--unit",
        "span",
        "--format",
        "prodigy",
        "--exclude",
        rounds,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    before = {t["meta"]["task_id"] for t in tasks}
    assert not before & {t["meta"]["task_id"] for t in srsly.read_jsonl(second)}
    answers = rounds / "round-1" / "answers.jsonl"
    srsly.write_jsonl(answers, [{**t, "answer": "accept"} for t in tasks])
    output = tmp_path / "reviewed" / "round-1.spacy"
    result = run_cli(
        "ingest", answers, output, "--format", "prodigy", "--model", MODEL, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(tasks)} answers" in result.stdout and "left missing" in result.stdout
    docs = list(DocBin().from_disk(output).get_docs(spacy.blank("en").vocab))
    reviewed = sum(
        t["meta"]["review_start"] < token["end"] and token["start"] < t["meta"]["review_end"]
        for t in tasks
        for token in t["tokens"]
    )
    assert len(docs) == len(tasks)
    assert sum(token.ent_iob_ != "" for doc in docs for token in doc) == reviewed
    bad = run_cli(
        "select",
        MODEL,
        pool,
        tmp_path / "t.jsonl",
        "--n",
        "3",
        "--format",
        "label-studio",
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "name the output file t.json" in bad.stderr
    bad = run_cli("ingest", tmp_path / "none.jsonl", output, "--format", "doccano", cwd=tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_spacy_train_learns_from_partial_answers(tmp_path: Path) -> None:
    """Span answers from the sample's gold: only the regions labelled; `spacy train` on them
    runs and its loss falls."""
    from spacy_bilstm_crf.train.conll import conll_to_docs

    nlp = spacy.blank("en")
    docs = conll_to_docs(nlp.vocab, REPO / "assets" / "wnut17_sample" / "train.conll", 1)
    records = []
    for doc in docs[:300]:
        for ent in doc.ents:  # each entity with two tokens of context on each side, alone
            first = doc[max(ent.start - 2, 0)].idx
            last = doc[min(ent.end + 2, len(doc)) - 1]
            end = last.idx + len(last)
            records.append(
                {
                    "text": doc.text,
                    "label": [[ent.start_char, ent.end_char, ent.label_]],
                    "review_start": first,
                    "review_end": end,
                    "source": doc.text,
                    "offset": 0,
                }
            )
    path = tmp_path / "answers.jsonl"
    srsly.write_jsonl(path, records)
    result = ingest(nlp, read_answers(path, "doccano"))
    assert result.missing_tokens > result.reviewed_tokens > 0
    train = tmp_path / "reviewed.spacy"
    DocBin(docs=result.docs).to_disk(train)
    dev = tmp_path / "dev.spacy"
    DocBin(docs=docs[300:340]).to_disk(dev)
    command = [
        sys.executable,
        "-m",
        "spacy",
        "train",
        REPO / "configs" / "bilstm_crf.cfg",
        "--paths.train",
        train,
        "--paths.dev",
        dev,
        "--training.max_steps",
        "60",
        "--training.eval_frequency",
        "15",
        "--components.ner.threads",
        "1",
    ]
    out = subprocess.run(
        list(map(str, command)),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [
        float(row.split()[2])
        for row in out.stdout.splitlines()
        if re.match(r"^\s*\d+\s+\d+\s+[\d.]+", row)
    ]
    assert len(losses) >= 4 and losses[-1] < losses[1], losses


def test_select_finds_the_only_bilstm_crf_component_whatever_its_name(tmp_path: Path) -> None:
    """A pipeline made with `nlp.add_pipe("bilstm_crf")` names its component `bilstm_crf`;
    with two, `--component` chooses."""
    nlp = spacy.load(MODEL)
    nlp.rename_pipe("ner", "bilstm_crf")
    one = tmp_path / "one"
    nlp.to_disk(one)
    nlp.add_pipe("ner", name="other", source=spacy.load(MODEL))
    two = tmp_path / "two"
    nlp.to_disk(two)
    pool = tmp_path / "pool.jsonl"
    srsly.write_jsonl(pool, [{"id": 0, "text": "Ann went to Paris with Bob ."}])
    ok = run_cli("select", one, pool, tmp_path / "a.jsonl", "--n", "1", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert len(list(srsly.read_jsonl(tmp_path / "a.jsonl"))) == 1
    both = run_cli("select", two, pool, tmp_path / "b.jsonl", "--n", "1", cwd=tmp_path)
    assert both.returncode == 2
    assert "2 bilstm_crf components (['bilstm_crf', 'other'])" in both.stderr
    assert "--component" in both.stderr and not (tmp_path / "b.jsonl").exists()
    chosen = run_cli(
        "select", two, pool, tmp_path / "c.jsonl", "--n", "1", "--component", "other", cwd=tmp_path
    )
    assert chosen.returncode == 0, chosen.stderr
