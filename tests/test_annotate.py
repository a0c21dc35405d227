"""The batch annotator: output equals `nlp.pipe` row for row (local and Ray engines, JSONL and
Parquet), bad rows keep their place, a killed run resumes losslessly, bad settings are clear."""

import importlib.util
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.language import Language
from spacy.training import Example
from spacy.util import fix_random_seed

from spacy_bilstm_crf.annotate import AnnotateError, annotate
from spacy_bilstm_crf.annotate.ray_engine import init_local_ray
from spacy_bilstm_crf.annotate.shards import MANIFEST, read_shard
from spacy_bilstm_crf.cli import main

TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]
# Small tables and widths, naming only settings that every tok2vec version has.
SMALL_MODEL = {
    "confidence": True,
    "model": {"hidden_width": 32, "tok2vec": {"rows": [500, 200, 200, 200], "char_width": 8}},
}
EXTRA_TEXTS = ["", "   ", "Berlin and London and Berlin.", "Shaka Khan, Shaka Khan!", "Zorblax"]
TEXTS = [f"{text} {tail}".strip() for tail in ("", "Berlin", "yes") for text, _ in TRAIN_DATA]
TEXTS = (TEXTS + EXTRA_TEXTS) * 3  # 51 texts: 3 shards of 20 rows, the last one short
SHARD = 20


# One worker runs this file's tests, so that its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("annotate")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline overfit on TRAIN_DATA, with entity scores, saved to disk; every random
    generator seeded, so that the model is the same whatever ran before in the process."""
    fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config=SMALL_MODEL)
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(40):
        nlp.update(examples, sgd=optimizer)
    path = tmp_path_factory.mktemp("annotate") / "model"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[list[dict]]:
    """What `nlp.pipe` finds in TEXTS, entity scores taken from `doc.spans`."""
    return pipe_ents(spacy.load(model_dir), TEXTS)


def pipe_ents(nlp: Language, texts: list[str], key: str | None = "bilstm_crf") -> list:
    result = []
    for doc in nlp.pipe(texts):
        scores = {}
        if key is not None:
            group = doc.spans[key]
            scores = {
                (s.start, s.end, s.label_): float(v) for s, v in zip(group, group.attrs["scores"])
            }
        ents = []
        for ent in doc.ents:
            ents.append(
                {"start_char": ent.start_char, "end_char": ent.end_char, "label": ent.label_}
            )
            if key is not None:
                ents[-1]["score"] = scores.get((ent.start, ent.end, ent.label_))
        result.append(ents)
    return result


def write_input(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(records), path)
    else:
        srsly.write_jsonl(path, records)
    return path


def read_output(folder: Path) -> list[dict]:
    """All records of an output folder, shards in name order (which is row order)."""
    return [record for path in sorted(folder.glob("part-*")) for record in read_shard(path)]


def assert_same_ents(got: list[dict], want: list[dict]) -> None:
    """Equal entities; scores to 1e-5 (JSON keeps ten decimals, and batching moves the last
    bits of float32 maths)."""
    assert [{k: v for k, v in e.items() if k != "score"} for e in got] == [
        {k: v for k, v in e.items() if k != "score"} for e in want
    ]
    for a, b in zip(got, want):
        assert (a.get("score") is None) == (b.get("score") is None)
        if b.get("score") is not None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def assert_matches(records: list[dict], ids: list, want: list[list[dict]]) -> None:
    assert [record["id"] for record in records] == ids
    assert [record["error"] for record in records] == [None] * len(ids)
    for record, ents in zip(records, want):
        assert_same_ents(record["ents"], ents)


@pytest.mark.parametrize("workers", [1, 2])
def test_local_engine_equals_pipe(model_dir, plain_dir, expected, tmp_path, workers) -> None:
    """With two workers, the model without scores and `confidence` given: the workers set it."""
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    source = write_input(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in zip(ids, TEXTS)])
    model, confidence = (model_dir, None) if workers == 1 else (plain_dir, True)
    out = tmp_path / "out"
    summary = annotate(model, source, out, shard_size=SHARD, workers=workers, confidence=confidence)
    assert_matches(read_output(out), ids, expected)
    names = [path.name for path in sorted(out.glob("part-*"))]
    assert names == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    manifest = srsly.read_json(out / MANIFEST)
    assert [shard["rows"] for shard in manifest["shards"].values()] == [20, 20, 11]
    assert manifest["complete"] and manifest["rows"] == len(TEXTS)
    assert (summary.rows, summary.errors, summary.shards_written) == (len(TEXTS), 0, 3)
    assert summary.words == sum(len(doc) for doc in spacy.blank("en").pipe(TEXTS))


def test_parquet_in_and_out_with_row_numbers(model_dir, expected, tmp_path) -> None:
    source = write_input(tmp_path / "in.parquet", [{"body": text, "n": 1} for text in TEXTS])
    out = tmp_path / "out"
    annotate(model_dir, source, out, text_column="body", output_format="parquet", shard_size=SHARD)
    assert sorted(path.name for path in out.glob("part-*"))[0] == "part-00000.parquet"
    assert_matches(read_output(out), list(range(len(TEXTS))), expected)


def test_jsonl_without_ids_uses_row_numbers(model_dir, expected, tmp_path) -> None:
    source = write_input(tmp_path / "in.json", [{"text": text} for text in TEXTS])
    annotate(model_dir, source, tmp_path / "out", shard_size=SHARD)
    assert_matches(read_output(tmp_path / "out"), list(range(len(TEXTS))), expected)


def test_scores_only_for_bilstm_crf_entities(model_dir, tmp_path) -> None:
    """An entity_ruler's entities get a null score; without `confidence` there is no score."""
    nlp = spacy.load(model_dir)
    ruler = nlp.add_pipe("entity_ruler", first=True)
    ruler.add_patterns([{"label": "ORG", "pattern": "Zorblax"}])
    nlp.to_disk(tmp_path / "ruled")
    texts = ["Zorblax hired Shaka Khan.", "Zorblax"]
    source = write_input(tmp_path / "in.jsonl", [{"text": text} for text in texts])
    annotate(tmp_path / "ruled", source, tmp_path / "out")
    records = read_output(tmp_path / "out")
    assert records[1]["ents"] == [{"start_char": 0, "end_char": 7, "label": "ORG", "score": None}]
    for record, ents in zip(records, pipe_ents(nlp, texts)):
        assert_same_ents(record["ents"], ents)
    # Off in the config and in the saved cfg: either may be what loading reads.
    nlp = spacy.load(model_dir, config={"components": {"bilstm_crf": {"confidence": False}}})
    nlp.get_pipe("bilstm_crf").cfg["confidence"] = False
    nlp.to_disk(tmp_path / "plain")
    annotate(tmp_path / "plain", source, tmp_path / "plain_out")
    for record, ents in zip(read_output(tmp_path / "plain_out"), pipe_ents(nlp, texts, None)):
        assert record["ents"] == ents and all("score" not in ent for ent in ents)


def test_bad_rows_keep_their_place(model_dir, tmp_path) -> None:
    source = tmp_path / "bad.jsonl"
    lines = [
        {"id": "a", "text": TEXTS[0]},
        {"id": "null", "text": None},
        {"id": "int", "text": 7},
        {"id": "no-text", "body": "Berlin"},
        {"id": "long", "text": "Berlin " * 10},
        "{not json",
        {"id": "b", "text": TEXTS[2]},
        [1, 2],
        "",
        {"id": "c", "text": TEXTS[1]},
    ]
    source.write_text("\n".join(x if isinstance(x, str) else srsly.json_dumps(x) for x in lines))
    summary = annotate(model_dir, source, tmp_path / "out", shard_size=2, max_chars=40)
    records = read_output(tmp_path / "out")
    # A malformed line's id is its row number; the blank line is no row (as in srsly).
    assert [r["id"] for r in records] == ["a", "null", "int", "no-text", "long", 5, "b", 7, "c"]
    errors = [record["error"] for record in records]
    assert errors[1:5] == [
        "text is null",
        "text is int, not str",
        "text is missing: the row has no 'text' field",
        "text has 70 characters, more than max_chars 40",
    ]
    assert errors[5].startswith("line 6 is not valid JSON")
    assert errors[7] == "line 8 is not a JSON object (got list)"
    assert errors[0] is errors[6] is errors[8] is None
    assert all(records[i]["ents"] == [] for i in (1, 2, 3, 4, 5, 7))
    want = pipe_ents(spacy.load(model_dir), [TEXTS[0], TEXTS[2], TEXTS[1]])
    for record, ents in zip([records[0], records[6], records[8]], want):
        assert_same_ents(record["ents"], ents)
    assert (summary.rows, summary.errors, summary.shards_written) == (9, 6, 5)


def test_long_text_message_has_thousands_separators(tmp_path) -> None:
    from spacy_bilstm_crf.annotate.rows import text_error

    assert text_error("x" * 2_000_001, 1_000_000) == (
        "text has 2,000,001 characters, more than max_chars 1,000,000"
    )


KILL_SCRIPT = """
import os, signal, sys
from spacy_bilstm_crf.annotate import annotate

def stop(report):
    if report.index == 1:
        os.kill(os.getpid(), signal.SIGKILL)

annotate(sys.argv[1], sys.argv[2], sys.argv[3], shard_size=int(sys.argv[4]), on_shard=stop)
"""


def test_killed_run_resumes_to_the_same_output(model_dir, tmp_path) -> None:
    """SIGKILL a real process right after its second shard, leave a half-written temporary
    and a shard the manifest never listed, then rerun: the output equals one whole run."""
    source = write_input(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    out = tmp_path / "out"
    args = [sys.executable, str(script), str(model_dir), str(source), str(out), "10"]
    killed = subprocess.run(args, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    manifest = srsly.read_json(out / MANIFEST)
    assert list(manifest["shards"]) == ["part-00000.jsonl", "part-00001.jsonl"]
    assert not manifest["complete"]
    (out / ".part-00002.jsonl.tmp").write_text('{"id": 20, "ents": [')
    (out / "part-00003.jsonl").write_text('{"id": "stale"}\n')
    summary = annotate(model_dir, source, out, shard_size=10)
    assert (summary.shards_skipped, summary.shards_written, summary.rows) == (2, 4, 31)
    assert (summary.earlier_rows, summary.total_rows, summary.total_shards) == (20, 51, 6)
    assert str(summary).startswith(
        f"51 rows (0 errors) in 6 shards in {out}: 20 rows (0 errors) in 2 shards from earlier "
        "runs, 31 rows (0 errors) in 4 shards written now, "
    )
    whole = tmp_path / "whole"
    annotate(model_dir, source, whole, shard_size=10)
    resumed, uninterrupted = read_output(out), read_output(whole)
    assert [r["id"] for r in resumed] == [r["id"] for r in uninterrupted] == list(range(51))
    for a, b in zip(resumed, uninterrupted):
        assert_same_ents(a["ents"], b["ents"])
    shards = srsly.read_json(out / MANIFEST)["shards"]
    assert list(shards) == [path.name for path in sorted(whole.glob("part-*"))]
    assert sorted(path.name for path in out.iterdir()) == sorted(p.name for p in whole.iterdir())


def test_rerun_with_other_settings_is_refused(model_dir, tmp_path) -> None:
    source = write_input(tmp_path / "in.jsonl", [{"text": text} for text in TEXTS[:5]])
    out = tmp_path / "out"
    annotate(model_dir, source, out, shard_size=2)
    again = annotate(model_dir, source, out, shard_size=2, batch_size=3)
    assert (again.shards_written, again.shards_skipped) == (0, 3)
    with pytest.raises(AnnotateError, match="shard_size was 2, now 3.*--overwrite"):
        annotate(model_dir, source, out, shard_size=3)
    write_input(source, [{"text": text} for text in TEXTS[:6]])
    with pytest.raises(AnnotateError, match="input size was"):
        annotate(model_dir, source, out, shard_size=2)
    summary = annotate(model_dir, source, out, shard_size=3, overwrite=True)
    assert summary.shards_written == 2 and len(read_output(out)) == 6


def test_empty_input_writes_a_complete_manifest(model_dir, tmp_path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text("")
    summary = annotate(model_dir, source, tmp_path / "out")
    assert summary.rows == 0 and srsly.read_json(tmp_path / "out" / MANIFEST)["rows"] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input": "missing.jsonl"}, "does not exist"),
        ({"input": "in.csv"}, "Cannot tell the format"),
        ({"input": "in.parquet", "text_column": "body"}, "text column 'body' is not in"),
        ({"input": "in.parquet", "id_column": "key"}, r"id column 'key' is not in .*'text'"),
        ({"threshold": 1.5}, r"threshold \(--threshold\) must be in \[0, 1\], got 1.5"),
        ({"confidence": "yes"}, r"confidence \(--confidence\) must be True or False"),
        ({"batch_size": 0}, r"batch_size \(--batch-size\) must be a whole number >= 1, got 0"),
        ({"workers": 0}, r"workers \(--workers\) must be"),
        ({"engine": "spark"}, "engine"),
        ({"output_format": "csv"}, "output_format"),
        ({"model": "no_such_pipeline"}, "Cannot load the pipeline 'no_such_pipeline'"),
        ({"gpus_per_actor": 1.0}, "needs engine 'ray'"),
    ],
)
def test_bad_settings_are_clear(model_dir, tmp_path, change, message) -> None:
    write_input(tmp_path / "in.csv", [{"text": "x"}])
    write_input(tmp_path / "in.parquet", [{"text": "x"}])
    settings = {"model": model_dir, "input": "in.parquet", **change}
    model, source = settings.pop("model"), tmp_path / settings.pop("input")
    with pytest.raises(AnnotateError, match=message):
        annotate(model, source, tmp_path / "out", **settings)


def test_cli_annotates_and_reports_bad_settings(model_dir, expected, tmp_path, capsys) -> None:
    source = write_input(tmp_path / "in.jsonl", [{"text": text} for text in TEXTS])
    out = tmp_path / "out"
    args = ["annotate", str(model_dir), str(source), str(out), "--shard-size", str(SHARD)]
    assert main([*args, "--batch-size", "8", "--quiet"]) == 0
    assert "51 rows (0 errors)" in capsys.readouterr().out
    assert_matches(read_output(out), list(range(len(TEXTS))), expected)
    assert main([*args, "--workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: workers (--workers) must be")


COLUMN_ROWS = [{"id": "a", "body": "Berlin"}, "{not json", {"id": "b", "body": "x", "n": 1}]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            [],
            "error: The text column 'text' is in none of the first 2 rows of {source}; their "
            "fields are ['id', 'body', 'n']. Name the right one with --text-column.",
        ),
        (
            ["--text-column", "body", "--id-column", "key"],
            "error: The id column 'key' is in none of the first 2 rows of {source}; their "
            "fields are ['id', 'body', 'n']. Name the right one with --id-column, or leave "
            "that out to number the rows.",
        ),
    ],
)
def test_cli_refuses_columns_the_first_rows_lack(tmp_path, capsys, extra, message) -> None:
    """Before any work: the model (here one that does not exist) is not even loaded, and no
    output folder is made."""
    source = tmp_path / "in.jsonl"
    lines = [row if isinstance(row, str) else srsly.json_dumps(row) for row in COLUMN_ROWS]
    source.write_text("\n".join(lines))
    out = tmp_path / "out"
    assert main(["annotate", "no_such_pipeline", str(source), str(out), *extra]) == 2
    assert capsys.readouterr().err == message.format(source=source) + "\n"
    assert not out.exists()


def test_columns_are_found_beyond_the_first_row(model_dir, tmp_path) -> None:
    """A column that some of the first rows have is fine; rows without it keep the old
    behaviour (an error row, or the row number as id)."""
    rows = [{"body": "Berlin"}, {"key": "k", "text": "London"}, {"text": "Berlin", "key": 2}]
    source = write_input(tmp_path / "in.jsonl", rows)
    summary = annotate(model_dir, source, tmp_path / "out", id_column="key")
    records = read_output(tmp_path / "out")
    assert [record["id"] for record in records] == [0, "k", 2]
    assert records[0]["error"] == "text is missing: the row has no 'text' field"
    assert summary.errors == 1


@pytest.fixture(scope="module")
def plain_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model with `confidence` off (in its config and its saved cfg)."""
    nlp = spacy.load(model_dir, config={"components": {"bilstm_crf": {"confidence": False}}})
    nlp.get_pipe("bilstm_crf").cfg["confidence"] = False
    path = tmp_path_factory.mktemp("plain") / "model"
    nlp.to_disk(path)
    return path


def middle_threshold(want: list[list[dict]]) -> float:
    """A threshold halfway between two of the scores in `want`, so that it drops some entities
    and keeps others, far from both."""
    scores = sorted({round(ent["score"], 4) for ents in want for ent in ents})
    assert len(scores) >= 2, scores
    middle = len(scores) // 2
    return (scores[middle - 1] + scores[middle]) / 2


def test_cli_confidence_and_threshold(plain_dir, model_dir, expected, tmp_path, capsys) -> None:
    """--confidence turns scores on, --no-confidence off, --threshold drops the entities below
    it (and turns scores on); the manifest records them, so a rerun with others is refused."""
    source = write_input(tmp_path / "in.jsonl", [{"text": text} for text in TEXTS])
    ids = list(range(len(TEXTS)))

    def run(model: Path, out: str, *options: str) -> list[dict]:
        args = [str(model), str(source), str(tmp_path / out), "--shard-size", str(SHARD)]
        assert main(["annotate", *args, "--quiet", *options]) == 0
        return read_output(tmp_path / out)

    unscored = pipe_ents(spacy.load(plain_dir), TEXTS, key=None)
    assert_matches(run(plain_dir, "plain"), ids, unscored)
    assert_matches(run(plain_dir, "on", "--confidence"), ids, expected)
    assert_matches(run(model_dir, "off", "--no-confidence"), ids, unscored)
    threshold = middle_threshold(expected)
    nlp = spacy.load(model_dir)
    nlp.get_pipe("bilstm_crf").cfg["threshold"] = threshold
    kept = pipe_ents(nlp, TEXTS)
    assert 0 < sum(map(len, kept)) < sum(map(len, expected))
    assert_matches(run(plain_dir, "kept", "--threshold", str(threshold)), ids, kept)
    settings = srsly.read_json(tmp_path / "kept" / MANIFEST)["settings"]
    assert settings["confidence"] is True
    assert settings["threshold"] == pytest.approx(threshold, rel=1e-9)
    assert_matches(run(plain_dir, "kept", "--threshold", str(threshold)), ids, kept)  # resumes
    capsys.readouterr()
    args = [str(plain_dir), str(source), str(tmp_path / "kept"), "--shard-size", str(SHARD)]
    assert main(["annotate", *args, "--threshold", "0.5"]) == 2
    assert "settings threshold was " in capsys.readouterr().err


def test_settings_need_a_bilstm_crf_component(tmp_path, capsys) -> None:
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "ORG", "pattern": "Zorblax"}])
    nlp.to_disk(tmp_path / "ruler")
    source = write_input(tmp_path / "in.jsonl", [{"text": "Zorblax"}])
    args = ["annotate", str(tmp_path / "ruler"), str(source), str(tmp_path / "out")]
    assert main([*args, "--confidence"]) == 2
    error = capsys.readouterr().err
    assert "has no bilstm_crf component for --confidence to set" in error
    assert "its components: ['entity_ruler']" in error
    assert not (tmp_path / "out").exists()


def test_missing_extras_are_named(model_dir, tmp_path, monkeypatch) -> None:
    source = write_input(tmp_path / "in.jsonl", [{"text": "x"}])
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(AnnotateError, match=r'pip install "spacy-bilstm-crf\[ray\]"'):
        annotate(model_dir, source, tmp_path / "out", engine="ray")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(AnnotateError, match=r'pip install "spacy-bilstm-crf\[parquet\]"'):
        annotate(model_dir, source, tmp_path / "out", output_format="parquet")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster on loopback for the Ray tests; shut down after them."""
    if importlib.util.find_spec("ray") is None:  # not importorskip: Ray must load on loopback
        pytest.skip("Ray is not installed")
    init_local_ray(num_cpus=2)
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("workers, output_format", [(1, "jsonl"), (2, "parquet")])
def test_ray_engine_equals_pipe(
    model_dir, plain_dir, expected, tmp_path, ray_cluster, workers, output_format
) -> None:
    """With two actors, the model without scores and `confidence` given: the actors set it."""
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    records = [{"id": i, "text": t} for i, t in zip(ids, TEXTS)] + [{"id": "null", "text": None}]
    source = write_input(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = annotate(
            model_dir if workers == 1 else plain_dir,
            source,
            out,
            engine="ray",
            workers=workers,
            shard_size=SHARD,
            batch_size=8,
            output_format=output_format,
            confidence=True if workers > 1 else None,
        )
    ours = [w for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)]
    assert not [w for w in ours if "ray/data/context.py" not in w.filename], ours
    got = read_output(out)
    assert_matches(got[:-1], ids, expected)
    assert got[-1] == {"id": "null", "ents": [], "error": "text is null"}
    assert (summary.rows, summary.errors, summary.shards_written) == (52, 1, 3)
    assert ray_cluster.is_initialized()  # the annotator leaves a cluster it did not start
