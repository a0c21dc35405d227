"""The research commands of benchmarks/, on the shipped WNUT-17 sample with a few steps."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc
from test_project import check_speed

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def run(*args: str | Path, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# One worker runs this file's tests, so that its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("benchmarks")


def test_this_file_runs_on_one_worker(request: pytest.FixtureRequest) -> None:
    """With `--dist loadgroup` the group shows in the node id; pytest-xdist 3.8 on pytest 9.2
    drops it (pytest-dev/pytest-xdist#1386), and every worker would build the fixtures."""
    if request.config.getoption("loadgroup", default=False):
        assert request.node.nodeid.endswith("@benchmarks"), "install the test extra's pytest"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """benchmarks/ in a copy of the repository, after `prepare` on the sample with vectors
    (a small table written as a user's own folder)."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("project.yml", "configs", "scripts", "assets", "benchmarks"):
        source = REPO / name
        if source.is_dir():
            skip = shutil.ignore_patterns("training", "metrics", "generated", "logs")
            shutil.copytree(source, root / name, ignore=skip)
        else:
            shutil.copy(source, root / name)
    nlp = spacy.blank("en")
    words = ["the", "a", "london", "paris", "new", "york", "to", "in", "of", "and"]
    data = numpy.eye(len(words), 6, dtype="float32")
    nlp.vocab.vectors = spacy.vectors.Vectors(strings=nlp.vocab.strings, data=data, keys=words)
    nlp.to_disk(root / "tiny_vectors")
    bench = root / "benchmarks"
    for command in ("prepare", "recipes"):
        args = [
            "--vars.data_dir",
            "assets",
            "--vars.dataset",
            "wnut17_sample",
            "--vars.limit",
            "120",
        ]
        args += ["--vars.vectors", str(root / "tiny_vectors")]
        result = run("-m", "spacy", "project", "run", command, bench, *args, cwd=bench, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return bench


@pytest.fixture(scope="module")
def seed_runs(bench: Path) -> Path:
    """The `seeds` command on the sample: all four systems, seed 0; the runs' folder."""
    args = ["--vars.dataset", "wnut17_sample", "--vars.vectors", "tiny", "--vars.seeds", "0"]
    args += ["--vars.max_steps", "6", "--vars.budget", "300", "--vars.threads", "1"]
    result = run("-m", "spacy", "project", "run", "seeds", bench, *args, cwd=bench, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return bench / "training" / "wnut17_sample" / "seeds-tiny"


def test_seeds_compares_the_systems_on_the_same_inputs(bench: Path, seed_runs: Path) -> None:
    """All four systems: one row each with its config and vectors, speed and memory per run,
    and the vectors given to those that should have them only."""
    table = (bench / "metrics" / "wnut17_sample" / "seeds-tiny.md").read_text(encoding="utf-8")
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    names = ["| bilstm_crf", "| ner", "| spacy_efficiency", "| spacy_accuracy"]
    assert [name for name in rows if name in names] == names
    assert "`bilstm_crf.cfg`, `../corpus/wnut17_sample/vectors`" in rows["| bilstm_crf"]
    assert "`spacy_efficiency.cfg`, none" in rows["| spacy_efficiency"]
    for name in names:
        assert rows[name].endswith("(0/1 at the budget) |")
    for system in ("bilstm_crf", "ner", "spacy_efficiency", "spacy_accuracy"):
        speed = json.loads((seed_runs / system / "0" / "speed.json").read_text(encoding="utf-8"))
        # spaCy's accuracy recipe ran at a 580th of its tokenizer on this sample, 2 cores busy
        check_speed(speed, slowest=100 if system == "bilstm_crf" else 2000)
        assert speed["peak_rss_mb"] > 100
        scores = json.loads((seed_runs / system / "0" / "scores.json").read_text(encoding="utf-8"))
        assert set(scores) == {"dev", "test"}  # recorded, so a rerun does not score again
        vectors = spacy.load(seed_runs / system / "0" / "model-best").vocab.vectors.shape[0]
        assert (vectors > 0) == (system != "spacy_efficiency"), system


def test_ablation_table(bench: Path) -> None:
    result = run(
        "scripts/ablate.py",
        "../configs/bilstm_crf.cfg",
        "../corpus/wnut17_sample",
        "metrics/ablation.md",
        "--steps",
        "6",
        "--seeds",
        "0",
        "--threads",
        "1",
        "--training-dir",
        "training/ablation",
        "--variants",
        "BiLSTM-CRF, BIO tags",
        "BiLSTM + softmax",
        cwd=bench,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    lines = (bench / "metrics" / "ablation.md").read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| BiLSTM")]
    assert [row.split(" | ")[0] for row in rows] == ["| BiLSTM-CRF, BIO tags", "| BiLSTM + softmax"]
    assert rows[0].split(" | ")[3] == "0.00%"  # the CRF never decodes an invalid sequence


def test_seed_comparison_rejects_a_setting_for_an_unknown_system(bench: Path) -> None:
    result = run(
        "scripts/compare_seeds.py",
        "../corpus/wnut17_sample",
        "metrics/unused.md",
        "--system",
        "ner=../configs/ner.cfg",
        "--set",
        "bilstm:paths.vectors=x",
        "--budget",
        "10",
        cwd=bench,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--set names 'bilstm', which is not a --system (ner)" in result.stderr


def recorded_run(folder: Path, seconds: float, stopped: bool, dev: float, test: dict) -> None:
    """What a finished compare_seeds run leaves in its folder, written by hand."""
    (folder / "model-best").mkdir(parents=True)
    (folder / "train_seconds.json").write_text(json.dumps({"seconds": seconds, "stopped": stopped}))
    score = {"per_type": {}, "invalid_rate": 0.0, "words_per_second": 1.0}
    scores = {
        "dev": {**score, "f": dev},
        "test": {**score, "f": test["f"], "per_type": test["per_type"]},
    }
    (folder / "scores.json").write_text(json.dumps(scores))
    speed = {"words_per_second": test["words/s"], "peak_rss_mb": test["rss"]}
    (folder / "speed.json").write_text(json.dumps(speed))


def test_seed_table_means_and_standard_deviations_by_hand(tmp_path: Path) -> None:
    """compare_seeds on recorded runs (nothing is trained): each cell is the mean ± sample
    standard deviation of the system's own seeds, checked against numbers worked out by hand;
    a system with `--seeds-of` gets only its seeds."""
    runs = tmp_path / "runs"
    recorded = [  # seed, training seconds, stopped at the budget, dev F1, test F1, speed, RSS
        (0, 120.0, False, 0.90, {"f": 0.80, "per_type": {"LOC": 0.70, "PER": 0.90}}, 100, 500),
        (1, 180.0, True, 0.92, {"f": 0.85, "per_type": {"LOC": 0.75, "PER": 0.95}}, 200, 600),
        (2, 240.0, True, 0.94, {"f": 0.93, "per_type": {"LOC": 0.80}}, 600, 700),
    ]
    for seed, seconds, stopped, dev, test, rate, rss in recorded:
        recorded_run(
            runs / "tagger" / str(seed),
            seconds,
            stopped,
            dev,
            {**test, "words/s": rate, "rss": rss},
        )
    recorded_run(
        runs / "recipe" / "1", 60.0, False, 0.5, {"f": 0.4, "per_type": {}, "words/s": 7, "rss": 8}
    )
    sys.path.insert(0, str(REPO / "benchmarks" / "scripts"))
    from compare_seeds import main

    output = tmp_path / "table.md"
    args = [str(tmp_path / "corpus"), str(output), "--system", "tagger=a.cfg"]
    args += ["--system", "recipe=b.cfg", "--seeds", "0", "1", "2", "--seeds-of", "recipe=1"]
    assert main([*args, "--budget", "600", "--training-dir", str(runs)]) == 0
    lines = output.read_text(encoding="utf-8").splitlines()
    assert "seeds [0, 1, 2] (recipe: [1])" in lines[2]
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    assert rows["| system"][-5:] == ["test LOC", "test PER", "words/s", "peak RSS", "training |"]
    # dev 0.90, 0.92, 0.94: mean 0.92, sd sqrt((0.02² + 0 + 0.02²) / 2) = 0.02
    # test 0.80, 0.85, 0.93: mean 0.86, sd sqrt((0.06² + 0.01² + 0.07²) / 2) = sqrt(0.0043)
    # LOC 0.70, 0.75, 0.80: 0.75 ± 0.05; PER 0.90, 0.95 and 0 where a seed found none:
    # mean 0.6167, sd sqrt((0.2833² + 0.3333² + 0.6167²) / 2) = 0.5354
    assert rows["| tagger"][1:] == [
        "92.00 ± 2.00",
        "86.00 ± 6.56",
        "75.00 ± 5.00",
        "61.67 ± 53.46",
        "300",
        "600 MB",
        "3.0 min (2/3 at the budget) |",
    ]
    assert rows["| recipe"][1:] == [
        "50.00 ± 0.00",
        "40.00 ± 0.00",
        "0.00 ± 0.00",
        "0.00 ± 0.00",
        "7",
        "8 MB",
        "1.0 min (0/1 at the budget) |",
    ]
    result = run(
        "benchmarks/scripts/compare_seeds.py",
        tmp_path,
        output,
        "--system",
        "a=a.cfg",
        "--seeds-of",
        "b=0",
        "--budget",
        "1",
        cwd=REPO,
        timeout=60,
    )
    assert (
        result.returncode == 2 and "--seeds-of names 'b', which is not a --system" in result.stderr
    )


def test_seen_unseen_split_counts_exactly() -> None:
    sys.path.insert(0, str(REPO / "benchmarks" / "scripts"))
    from seen_unseen import entity_texts, split_recall

    nlp = spacy.blank("en")
    train = [Doc(nlp.vocab, words=["Paris", "and", "Leeds"], ents=["B-LOC", "O", "B-ORG"])]
    words = ["Leeds", "beat", "Hull", "City"]
    gold = [Doc(nlp.vocab, words=words, ents=["B-ORG", "O", "B-ORG", "I-ORG"])]
    # Leeds found with the right label; "Hull City" missed; "beat" a wrong, unseen prediction.
    predicted = [Doc(nlp.vocab, words=words, ents=["B-ORG", "B-PER", "B-LOC", "O"])]
    assert entity_texts(train) == {"paris", "leeds"}
    assert split_recall(gold, predicted, entity_texts(train)) == {
        "seen": {"gold": 1, "found": 1, "wrong": 0},
        "unseen": {"gold": 1, "found": 0, "wrong": 2},
    }


def test_speed_command_compares_the_three_systems_and_times_training(
    bench: Path, seed_runs: Path
) -> None:
    """The `speed` command: the seeds' four systems side by side
    with 1 and 2 threads (peak memory, the CPU's vector instructions), then training steps/s."""
    args = ["--vars.dataset", "wnut17_sample", "--vars.vectors", "tiny"]
    result = run("-m", "spacy", "project", "run", "speed", bench, *args, cwd=bench, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    table = (bench / "metrics" / "wnut17_sample" / "speed-tiny.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| `bilstm_crf`",
        "| `spacy_efficiency`",
        "| `ner`",
        "| `spacy_accuracy`",
    ]
    assert "| 1 thread(s) | 2 thread(s) | peak RSS |" in table and "(1.00x)" in rows[0]
    assert torch.backends.cpu.get_cpu_capability() in table
    assert "2 threads against 1: `bilstm_crf`" in table
    pattern = r"- ([12]) thread\(s\): ([0-9.]+) steps/s \(predicting the same batches: ([0-9.]+)"
    steps = re.findall(pattern, result.stdout)
    assert [threads for threads, _, _ in steps] == ["1", "2"]
    for _, training, predicting in steps:  # a step predicts its batch and more: a few times slower
        assert float(predicting) / 100 < float(training), result.stdout


def test_vectors_table_cut_keeps_every_key_of_a_kept_row() -> None:
    sys.path.insert(0, str(REPO / "benchmarks" / "scripts"))
    from vectors_size import cut_table

    nlp = spacy.blank("en")
    data = numpy.arange(12, dtype="float32").reshape(4, 3) / 7
    table = spacy.vectors.Vectors(strings=nlp.vocab.strings, data=data, keys=["a", "b", "c", "d"])
    table.add("B", row=1)  # a capitalised key sharing the row of "b"
    table.add("D", row=3)
    cut = cut_table(table, 2, "float16")
    assert cut.shape == (2, 3) and cut.data.dtype == numpy.float16
    assert {nlp.vocab.strings[key] for key in cut.key2row} == {"a", "b", "B"}
    assert numpy.allclose(cut[nlp.vocab.strings["B"]], data[1], atol=1e-3)
    assert cut_table(table, 0, "float32").shape == (4, 3)


def test_active_learning_simulation_two_rounds(bench: Path) -> None:
    """The annotation loop's simulation on the sample: two rounds of each strategy, the
    full-data line, the table and the plot."""
    args = ["--vars.dataset", "wnut17_sample", "--vars.seeds", "0", "--vars.threads", "1"]
    args += ["--vars.al_start", "0.1", "--vars.al_step", "0.1", "--vars.al_until", "0.2"]
    args += ["--vars.al_round_steps", "6"]
    command = ["-m", "spacy", "project", "run", "active-learning", bench, *args]
    result = run(*command, cwd=bench, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    runs = bench / "metrics" / "active" / "wnut17_sample"
    for strategy in ("random", "sentence", "span"):
        rounds = [json.loads(line) for line in (runs / f"{strategy}-0" / "results.jsonl").open()]
        assert [r["round"] for r in rounds] == [0, 1]
        assert rounds[0]["share"] == pytest.approx(0.1, abs=0.02)
        assert rounds[1]["tokens"] > rounds[0]["tokens"]
    table = (runs.parent / "wnut17_sample.md").read_text(encoding="utf-8")
    assert "97% of full F1" in table and "spans by uncertainty, partial labels" in table
    assert (runs.parent / "wnut17_sample.png").read_bytes().startswith(b"\x89PNG")
    assert (runs / "full-0" / "model" / "config.cfg").is_file()
    again = run(*command, "--force", cwd=bench, timeout=900)  # finished runs stay as they are
    assert again.returncode == 0 and "span-0: done" in again.stdout + again.stderr
    longer = [arg if arg != "0.2" else "0.3" for arg in command]  # a finished run goes on
    longer += ["--vars.al_strategies", "full random sentence", "--force"]
    assert run(*longer, cwd=bench, timeout=900).returncode == 0
    for strategy in ("random", "sentence"):
        rounds = [json.loads(line) for line in (runs / f"{strategy}-0" / "results.jsonl").open()]
        assert [r["share"] for r in rounds] == pytest.approx([0.1, 0.2, 0.3], abs=0.02)
    straight = bench / "metrics" / "straight"  # the same run, never stopped, chooses the same
    script = ["scripts/active_learning.py", "../corpus/wnut17_sample", straight, "--seeds", "0"]
    script += ["--strategies", "sentence", "--vectors", "../corpus/wnut17_sample/vectors"]
    script += ["--start", "0.1", "--step", "0.1", "--until", "0.3", "--round-steps", "6"]
    assert run(*script, cwd=bench, timeout=900).returncode == 0
    for name in ("round-01", "round-02"):
        chosen = (straight / "sentence-0" / name / "reviewed.json").read_text(encoding="utf8")
        assert chosen == (runs / "sentence-0" / name / "reviewed.json").read_text(encoding="utf8")
