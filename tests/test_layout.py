"""The package's layout keeps the data flow: the PyTorch modules know nothing of spaCy or
thinc, the pipe does no CRF maths, and no module grows past a few hundred lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spacy_bilstm_crf"


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports, relative ones written with their leading dots."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", modules("nn"), ids=lambda path: path.name)
def test_torch_modules_import_nothing_of_spacy_or_thinc(path: Path) -> None:
    for module in imported_modules(path):
        top = module.lstrip(".").split(".")[0]
        assert top not in ("spacy", "thinc"), f"{path.name} imports {module}"
        if module.startswith(".."):  # out of nn/: only the tag schemes
            assert module == "..tags", f"{path.name} imports {module}"


@pytest.mark.parametrize("path", modules("pipeline"), ids=lambda path: path.name)
def test_the_pipe_reaches_the_model_only_through_ml(path: Path) -> None:
    for module in imported_modules(path):
        assert module.split(".")[0] != "torch", f"{path.name} imports {module}"
        assert not module.startswith("..nn"), f"{path.name} imports {module}"


def test_no_module_is_much_over_400_lines() -> None:
    """The largest is the component (`pipeline/bilstm_crf.py`), one job in one file as spaCy
    writes its own components."""
    sizes = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda item: -item[1])[:3]


@pytest.mark.parametrize("project", ["", "benchmarks"])
def test_every_script_is_run_by_a_project_command(project: str) -> None:
    """A script in `scripts/` is named by a command of the project beside it, or imported by
    one that is (a helper module): no dead scripts."""
    root = PACKAGE.parent / project
    commands = (root / "project.yml").read_text(encoding="utf-8")
    scripts = {path.stem: path for path in (root / "scripts").glob("*.py")}
    run = {name for name in scripts if f"scripts/{name}.py" in commands}
    helpers = {
        module for name in run for module in imported_modules(scripts[name]) if module in scripts
    }
    assert sorted(set(scripts) - run - helpers) == []
