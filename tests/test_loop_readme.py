"""README's annotation loop, run as written for each tool on what the tools really exported:
`select` names the round's files for the tool, the person's export goes beside them, and
`learn` ingests it, trains with it and evaluates."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import srsly
from spacy.tokens import DocBin
from spacy.vocab import Vocab
from test_project import ONE_THREAD, SHORT, fresh_copy

REPO = Path(__file__).resolve().parents[1]
EXPORTS = REPO.parent / "shared" / "data" / "tool_exports"
STUDIO = EXPORTS / "label_studio_1.23.2"
DOCCANO = EXPORTS / "doccano_1.8.4"


def readme_loop() -> list[str]:
    """The commands of README's "Annotate less" section, in order."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Annotate less") :].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith("python -m spacy project")]


def run_line(line: str, tool: str, project: Path, *extra: str) -> subprocess.CompletedProcess:
    """A README command for `tool`, run in `project` with a short schedule."""
    args = line.replace("--vars.tool label-studio", f"--vars.tool {tool}").split()
    assert args[:5] == ["python", "-m", "spacy", "project", "run"] and args[6] == "."
    return subprocess.run(
        [sys.executable, *args[1:], *extra],
        cwd=project,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with the sample converted, a trained pipeline (the test
    fixture's) and a pool of texts as README names it."""
    folder = fresh_copy(tmp_path_factory.mktemp("loop"))
    convert = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "convert", "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert convert.returncode == 0, convert.stderr[-3000:]
    model = folder / "training" / "wnut17_sample" / "bilstm_crf" / "model-best"
    shutil.copytree(REPO / "tests" / "fixtures" / "sample_pipeline", model)
    docs = DocBin().from_disk(folder / "corpus" / "wnut17_sample" / "test.spacy").get_docs(Vocab())
    srsly.write_jsonl(
        folder / "texts.jsonl", [{"id": i, "text": d.text} for i, d in enumerate(docs)]
    )
    return folder


@pytest.mark.skipif(not EXPORTS.exists(), reason="../shared/data/tool_exports is absent")
@pytest.mark.parametrize(
    ("tool", "round_", "tasks", "export", "docs"),
    [
        ("label-studio", "1", STUDIO / "tasks_doc.json", STUDIO / "edited_subtoken_export.json", 9),
        (
            "doccano",
            "3",
            DOCCANO / "tasks_sentence_doccano.jsonl",
            DOCCANO / "export_approved_True.jsonl",
            6,
        ),
    ],
)
def test_readme_loop_runs_for_each_tool(
    project: Path, tool: str, round_: str, tasks: Path, export: Path, docs: int
) -> None:
    select, learn = readme_loop()
    assert "--vars.round 1" in select and "--vars.round 1" in learn
    select, learn = (
        line.replace("--vars.round 1", f"--vars.round {round_}") for line in (select, learn)
    )
    chosen = run_line(select, tool, project)
    assert chosen.returncode == 0, chosen.stdout[-3000:] + chosen.stderr[-3000:]
    folder = project / "annotation" / "wnut17_sample" / f"round-{round_}"
    suffix = ".json" if tool == "label-studio" else ".jsonl"
    assert (folder / f"tasks{suffix}").is_file() and (folder / "selection.txt").is_file()
    if tool == "label-studio":
        assert 'granularity="word"' in (folder / "tasks.label_config.xml").read_text()
        assert isinstance(json.loads((folder / "tasks.json").read_text()), list)
    # The person answered the tasks the tools really got: those go in the round's folder.
    shutil.copy(tasks, folder / f"tasks{suffix}")
    shutil.copy(export, folder / f"answers{suffix}")
    learned = run_line(learn, tool, project, *SHORT)
    assert learned.returncode == 0, learned.stdout[-3000:] + learned.stderr[-3000:]
    reviewed = project / "corpus" / "wnut17_sample" / "reviewed" / f"round-{round_}.spacy"
    assert len(list(DocBin().from_disk(reviewed).get_docs(Vocab()))) == docs
    assert f"-> {docs} docs" in learned.stdout


@pytest.mark.skipif(not EXPORTS.exists(), reason="../shared/data/tool_exports is absent")
def test_readme_loop_refuses_doccanos_plain_export(project: Path) -> None:
    select, learn = (line.replace("--vars.round 1", "--vars.round 4") for line in readme_loop())
    assert run_line(select, "doccano", project).returncode == 0
    folder = project / "annotation" / "wnut17_sample" / "round-4"
    shutil.copy(DOCCANO / "tasks_sentence_doccano.jsonl", folder / "tasks.jsonl")
    shutil.copy(DOCCANO / "export_approved_False.jsonl", folder / "answers.jsonl")
    learned = run_line(learn, "doccano", project, *SHORT)
    assert learned.returncode != 0 and "Export only approved documents" in learned.stderr
    assert not (project / "corpus" / "wnut17_sample" / "reviewed" / "round-4.spacy").exists()
