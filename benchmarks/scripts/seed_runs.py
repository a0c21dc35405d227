"""Train one config with one seed under a step or time budget, and score the result.

Shared by `ablate.py` (tagger variants) and `compare_seeds.py` (bilstm_crf against spaCy's
`ner`): both train many (config, seed) pairs and report means and standard deviations.
"""

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import spacy
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import load_config

# The project's own scripts (timed_run.py, train.py, speed.py) are in scripts/ at the
# repository's root.
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from timed_run import run_timed  # noqa: E402
from train import keep_last_if_better  # noqa: E402

# What `compare_seeds.py` records next to a run's `model-best`, so that a table is rebuilt
# without scoring it again.
SCORES = "scores.json"


@dataclass
class Score:
    """Entity scores of one pipeline on one corpus."""

    f: float
    per_type: dict[str, float]
    invalid_rate: float
    words_per_second: float


def train(
    config: Path,
    corpus: Path,
    output: Path,
    seed: int,
    threads: int,
    overrides: dict[str, str] | None = None,
    steps: int | None = None,
    budget: float | None = None,
) -> tuple[float, bool]:
    """`spacy train` on corpus/{train,dev}.spacy; returns the wall time in seconds, and
    whether the budget stopped it.

    `steps` overrides `[training] max_steps`; `budget` interrupts training after that many
    seconds, keeping `model-best`. As in the project's `train`, the final weights replace
    `model-best` when they score higher on dev (a run the budget stops ends off the
    evaluation grid). A finished run (its `model-best` and recorded time exist) is
    not trained again, so that an interrupted series resumes where it stopped; training again
    removes the scores and speed recorded for the old `model-best`.
    """
    record = output / "train_seconds.json"
    if record.exists() and (output / "model-best").exists():
        done = json.loads(record.read_text(encoding="utf8"))
        return float(done["seconds"]), bool(done.get("stopped", False))
    for stale in (SCORES, "speed.json"):
        (output / stale).unlink(missing_ok=True)
    command = ["python", "-m", "spacy", "train", str(config), "--output", str(output)]
    command += ["--paths.train", str(corpus / "train.spacy")]
    command += ["--paths.dev", str(corpus / "dev.spacy"), "--system.seed", str(seed)]
    if steps is not None:
        command += ["--training.max_steps", str(steps)]
        schedule = load_config(config)["training"]["optimizer"].get("learn_rate")
        if isinstance(schedule, dict) and "total_steps" in schedule:
            command += ["--training.optimizer.learn_rate.total_steps", str(steps)]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", value]
    run = run_timed(command, threads, budget)
    if run.status != 0 or not (output / "model-last").exists():
        raise SystemExit(f"training failed ({run.status}): {' '.join(command)}")
    print(f"{output}: {keep_last_if_better(output, short=False)}")
    record.write_text(json.dumps({"seconds": run.seconds, "stopped": run.stopped}), encoding="utf8")
    return run.seconds, run.stopped


def score(nlp: spacy.Language, data: Path, component: str = "ner") -> Score:
    """Entity F1 (overall and per type) on `data`, with `nlp.evaluate`'s words per second.

    For the `bilstm_crf` component, also the share of decoded sequences that broke the tag
    scheme before repair (only its softmax head can); other components report 0.
    """
    docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs]
    stats = getattr(nlp.get_pipe(component), "decode_stats", None)
    if stats is not None:
        stats.update(sequences=0, invalid=0)
    scores = nlp.evaluate(examples)
    invalid = stats["invalid"] / max(stats["sequences"], 1) if stats is not None else 0.0
    per_type = {label: value["f"] for label, value in (scores["ents_per_type"] or {}).items()}
    return Score(scores["ents_f"], per_type, invalid, scores["speed"])


def mean_sd(values: Sequence[float], scale: float = 100.0) -> str:
    """`mean ± sd` of `values` times `scale`, two decimals (sd 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * sd:.2f}"


def write_lines(path: Path | None, lines: Sequence[str]) -> None:
    """Print a Markdown table (or any lines), and write it to `path` when one is given."""
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")
