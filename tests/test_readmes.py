"""What the READMEs name exists: the project commands and their vars, the scripts and their
flags, the package's commands and flags, the configs and files they show, so that the command
beside a number runs as written. Both project.yml files: the scripts and configs their
commands run exist.

Only the current parts are read: the benchmarks README's "What was tried and did not pay" and
"History" name code that left the tree with the commit that had it.
"""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from weasel.util import load_project_config

from spacy_bilstm_crf.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
# Each README and the project its bare names (`speed`, `--vars.seed`) belong to.
READMES = {"README.md": ".", "benchmarks/README.md": "benchmarks"}
HISTORICAL = ("## What was tried and did not pay", "## History")
# Folders that commands write (gitignored) or that hold a user's data, not the repository's.
MADE_BY_RUNS = (
    "corpus/",
    "training/",
    "metrics/",
    "annotation/",
    "packages/",
    "out/",
    "generated/",
    "../",
)
RUN = re.compile(r"spacy project run (\S+) (\S+)((?: +\S+)*)")


def current_text(name: str) -> str:
    text = (REPO / name).read_text(encoding="utf-8")
    ends = [text.index(heading) for heading in HISTORICAL if heading in text]
    return text[: min(ends)] if ends else text


def code_spans(text: str) -> list[str]:
    """Each line of a fenced block and each inline code span (joined where it wraps), in the
    order they appear."""
    found = []
    for match in re.finditer(r"```[a-z]*\n(.*?)```|(?<!`)`([^`]+)`(?!`)", text, re.S):
        if match.group(1) is not None:
            lines = (line.split("#")[0].strip() for line in match.group(1).splitlines())
            found += [line for line in lines if line]
        else:
            found.append(" ".join(match.group(2).split()))
    return found


def project(folder: str) -> dict:
    config = load_project_config(REPO / folder)
    config["names"] = {c["name"] for c in config["commands"]} | set(config["workflows"])
    return config


PROJECTS = {".": project("."), "benchmarks": project("benchmarks")}


def named_vars(span: str) -> list[str]:
    return [name for name in re.findall(r"--vars\.(\w+)", span) if not name.isupper()]


@pytest.mark.parametrize("readme", list(READMES))
def test_project_commands_and_vars_named_in_the_readme_exist(readme: str) -> None:
    """`spacy project run NAME PROJECT --vars.X ...`: NAME is a command or workflow of PROJECT
    and X one of its vars; a `--vars.X` shown alone belongs to the command shown before it."""
    home = READMES[readme]
    last = home
    missing = []
    for span in code_spans(current_text(readme)):
        runs = RUN.findall(span)
        for command, folder, _ in runs:
            if command.isupper():  # the COMMAND placeholder
                last = folder
                continue
            if folder not in PROJECTS:
                missing.append(f"project {folder!r} in {span!r}")
                continue
            last = folder
            if command not in PROJECTS[folder]["names"]:
                missing.append(f"command {command!r} of {folder!r}")
        for name in named_vars(span):
            if name not in PROJECTS[last]["vars"]:
                missing.append(f"var {name!r} of {last!r} in {span!r}")
    assert missing == []


def test_commands_and_vars_named_in_prose_exist() -> None:
    """The benchmarks README's "the `crf-speed` command", "`prepare` with `--vars...`", and the
    README's list of vars for `all`."""
    text = current_text("benchmarks/README.md")
    names = re.findall(r"`([a-z][a-z-]+)`(?= command| with `--vars| and `[a-z-]+` commands)", text)
    names += re.findall(r"and `([a-z][a-z-]+)` commands", text)
    names += re.findall(r"`([a-z][a-z-]+) --vars\.", text)
    assert names and sorted(set(names) - PROJECTS["benchmarks"]["names"]) == []
    readme = current_text("README.md")
    listed = re.search(r"Vars: (.*?);", readme, re.S)
    assert listed, "README lists the vars of `all`"
    without_values = re.sub(r"\([^)]*\)", "", listed.group(1))
    names = re.findall(r"`(\w+)`", without_values)
    assert len(names) >= 5 and sorted(set(names) - set(PROJECTS["."]["vars"])) == []


def script_path(name: str, home: str) -> Path | None:
    """Where a script the README names is: from the root, from its project, or by name."""
    candidates = [REPO / name, REPO / home / name]
    if "/" not in name:
        candidates += [REPO / "scripts" / name, REPO / "benchmarks" / "scripts" / name]
    return next((path for path in candidates if path.is_file()), None)


@pytest.mark.parametrize("readme", list(READMES))
def test_scripts_files_and_flags_named_in_the_readme_exist(readme: str) -> None:
    """Scripts (and the flags shown after them), configs, plots and other repository files."""
    home = READMES[readme]
    missing = []
    for span in code_spans(current_text(readme)):
        words = span.split()
        for i, word in enumerate(words):
            word = word.rstrip(",;:)")
            if word.endswith(".py"):
                path = script_path(word, home)
                if path is None:
                    missing.append(f"script {word}")
                    continue
                source = path.read_text(encoding="utf-8")
                for flag in (w for w in words[i + 1 :] if re.fullmatch(r"--[a-z][\w-]*", w)):
                    if f'"{flag}"' not in source:
                        missing.append(f"{word} {flag}")
            elif word.endswith((".cfg", ".png", ".md", ".yml")) or word.startswith(".ci/"):
                if word.startswith(MADE_BY_RUNS) or any(c in word for c in "*<"):
                    continue
                places = [REPO / word, REPO / home / word, REPO / "configs" / word]
                if not any(path.exists() for path in places):
                    missing.append(f"file {word}")
    assert missing == []


def package_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="python -m spacy_bilstm_crf")
    commands = parser.add_subparsers()
    for command in COMMANDS:
        command.add(commands)
    return dict(commands.choices)


@pytest.mark.parametrize("readme", list(READMES))
def test_package_commands_flags_and_make_targets_named_in_the_readme_exist(readme: str) -> None:
    """`python -m spacy_bilstm_crf COMMAND --flag` and `make TARGET`."""
    parsers = package_parsers()
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    missing = []
    for span in code_spans(current_text(readme)):
        for command, rest in re.findall(r"python -m spacy_bilstm_crf (\S+)(.*)", span):
            if command not in parsers:
                missing.append(f"command {command}")
                continue
            known = parsers[command].format_help()
            missing += [
                f"{command} {flag}"
                for flag in re.findall(r"(?<!\S)(--[a-z][\w-]*)", rest)
                if flag not in known
            ]
        for target in re.findall(r"(?<![\w-])make (\w+)", span):
            if not re.search(rf"^{target}:", makefile, re.M):
                missing.append(f"make {target}")
    assert missing == []


@pytest.mark.parametrize("folder", list(PROJECTS))
def test_the_scripts_and_configs_the_project_commands_run_exist(folder: str) -> None:
    missing = []
    for command in PROJECTS[folder]["commands"]:
        for line in command["script"]:
            for name in re.findall(r"(?<![\w/.])((?:\.\./)?(?:scripts|configs)/[\w.]+)", line):
                if "$" not in name and not (REPO / folder / name).is_file():
                    missing.append(f"{command['name']}: {name}")
    assert missing == []


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.skipif(
    shutil.which("git") is None or git("rev-parse", "--is-shallow-repository").stdout != "false\n",
    reason="needs git and the repository's whole history",
)
@pytest.mark.parametrize("readme", list(READMES))
def test_the_commits_the_readme_names_exist(readme: str) -> None:
    """A number names the commit whose code made it: that commit is in the history."""
    text = (REPO / readme).read_text(encoding="utf-8")
    commits = set(re.findall(r"`([0-9a-f]{7,40})`", text))
    missing = [c for c in sorted(commits) if git("cat-file", "-e", f"{c}^{{commit}}").returncode]
    assert missing == []
