"""Train each tagger variant with the same budget and seeds, and write one Markdown table.

    python scripts/ablate.py configs/bilstm_crf.cfg corpus/conll2003 metrics/conll2003/ablation.md \
        --steps 3000 --seeds 0 1 2 --threads 2

For every variant and seed: `spacy train` (timed, with `--system.seed`), then the best model
is scored on dev and test. The table has dev and test entity F1 (mean and standard deviation
over seeds), the share of decoded sequences that broke the tag scheme before repair (only the
softmax head can), words per second on test, and training time.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example
from timed_run import run_timed

VARIANTS: dict[str, dict[str, str]] = {
    "BiLSTM-CRF (default)": {},
    "BiGRU-CRF": {"components.ner.model.rnn": "gru"},
    "BiLSTM + softmax": {"components.ner.model.head": "softmax"},
    "BiLSTM-CRF, CRF+CE loss": {"components.ner.model.loss": "crf+ce"},
    "BiLSTM-CRF, BILUO tags": {"components.ner.scheme": "BILUO"},
}


def train(
    config: Path, corpus: Path, output: Path, overrides: dict, seed: int, steps: int, threads: int
) -> float:
    """Train one variant; returns the wall time in seconds.

    A finished run (its `model-best` and recorded time exist) is not trained again, so that an
    interrupted ablation resumes where it stopped.
    """
    record = output / "train_seconds.json"
    if record.exists() and (output / "model-best").exists():
        return float(json.loads(record.read_text(encoding="utf8"))["seconds"])
    command = ["python", "-m", "spacy", "train", str(config), "--output", str(output)]
    command += [
        "--paths.train",
        str(corpus / "train.spacy"),
        "--paths.dev",
        str(corpus / "dev.spacy"),
    ]
    command += ["--system.seed", str(seed), "--training.max_steps", str(steps)]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    status, seconds = run_timed(command, threads)
    if status != 0:
        raise SystemExit(f"training failed ({status}): {' '.join(command)}")
    record.write_text(json.dumps({"seconds": seconds}), encoding="utf8")
    return seconds


def score(model: Path, data: Path) -> tuple[float, float, float]:
    """Entity F1, invalid-sequence rate before repair, and words per second on `data`."""
    nlp = spacy.load(model)
    docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs]
    tagger = nlp.get_pipe("ner")
    tagger.decode_stats.update(sequences=0, invalid=0)
    scores = nlp.evaluate(examples)
    stats = tagger.decode_stats
    return scores["ents_f"], stats["invalid"] / max(stats["sequences"], 1), scores["speed"]


def mean_sd(values: Sequence[float], scale: float = 100.0) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * sd:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("corpus", type=Path, help="folder with train/dev/test.spacy")
    parser.add_argument("output", type=Path, help="Markdown table to write")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--training-dir", type=Path, default=Path("training/ablation"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.variants:
        dev, test, invalid, speed, seconds = [], [], [], [], []
        for seed in args.seeds:
            folder = args.training_dir / name.replace(" ", "_").replace(",", "") / str(seed)
            config, corpus = args.config, args.corpus
            seconds.append(
                train(config, corpus, folder, VARIANTS[name], seed, args.steps, args.threads)
            )
            dev.append(score(folder / "model-best", args.corpus / "dev.spacy")[0])
            test_f, test_invalid, test_speed = score(
                folder / "model-best", args.corpus / "test.spacy"
            )
            test.append(test_f)
            invalid.append(test_invalid)
            speed.append(test_speed)
            print(f"{name} seed {seed}: dev {dev[-1]:.4f} test {test_f:.4f}", flush=True)
        rows.append(
            f"| {name} | {mean_sd(dev)} | {mean_sd(test)} | {100 * statistics.mean(invalid):.2f}% "
            f"| {statistics.mean(speed):,.0f} | {statistics.mean(seconds) / 60:.1f} min |"
        )
    date = datetime.now(timezone.utc).date().isoformat()
    lines = [
        f"Ablation on `{args.corpus}`: {args.steps} steps, seeds {args.seeds}, "
        f"{args.threads} thread(s), {date}. Mean ± standard deviation over seeds.",
        "",
        "| variant | dev F1 | test F1 | invalid before repair | words/s | training time |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n", encoding="utf8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
