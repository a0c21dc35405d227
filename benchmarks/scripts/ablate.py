"""Train each tagger variant with the same budget and seeds, and write one Markdown table.

    python scripts/ablate.py configs/bilstm_crf.cfg corpus/conll2003 metrics/conll2003/ablation.md \
        --steps 3000 --seeds 0 1 2 --threads 2

The variants are one change each from the literature; `--variants` also takes the levers
(LEVERS), tried on top of the default.

For every variant and seed: `spacy train` (timed, with `--system.seed`), then the best model
is scored on dev and test. The table has dev and test entity F1 (mean and standard deviation
over seeds), the share of decoded sequences that broke the tag scheme before repair (only the
softmax head can), words per second on test, and training time.
"""

import argparse
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import spacy
import torch
from seed_runs import mean_sd, score, train, write_lines

# Each variant changes one thing of the BIO baseline. The scheme, word dropout and static
# vectors are always given, so that the table means the same whatever the config's defaults are.
TOK2VEC = "components.ner.model.tok2vec"
PLAIN = {f"{TOK2VEC}.word_dropout": "0.0", f"{TOK2VEC}.include_static_vectors": "false"}
BIO = {"components.ner.scheme": "BIO", **PLAIN}
VARIANTS: dict[str, dict[str, str]] = {
    "BiLSTM-CRF, BIO tags": BIO,
    "BiGRU-CRF": {**BIO, "components.ner.model.rnn": "gru"},
    "BiLSTM + softmax": {**BIO, "components.ner.model.head": "softmax"},
    "BiLSTM-CRF, CRF+CE loss": {**BIO, "components.ner.model.loss": "crf+ce"},
    "BiLSTM-CRF, BILUO tags": {"components.ner.scheme": "BILUO", **PLAIN},
}
# Levers tried on top of the default (BILUO tags), each one change; `--variants` picks them.
BILUO = VARIANTS["BiLSTM-CRF, BILUO tags"]
LEVERS: dict[str, dict[str, str]] = {
    "BILUO, word dropout 0.25": {**BILUO, f"{TOK2VEC}.word_dropout": "0.25"},
    # Needs --vectors.
    "BILUO, word dropout 0.25, vectors": {
        **BILUO,
        f"{TOK2VEC}.word_dropout": "0.25",
        f"{TOK2VEC}.include_static_vectors": "true",
    },
    "BILUO, word dropout 0.25, vectors, dropout 0.5": {
        **BILUO,
        f"{TOK2VEC}.word_dropout": "0.25",
        f"{TOK2VEC}.include_static_vectors": "true",
        "components.ner.model.dropout": "0.5",
    },
}
CHOICES = {**VARIANTS, **LEVERS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("corpus", type=Path, help="folder with train/dev/test.spacy")
    parser.add_argument("output", type=Path, help="Markdown table to write")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--training-dir", type=Path, default=Path("training/ablation"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(CHOICES))
    parser.add_argument(
        "--vectors", type=Path, default=None, help="[paths] vectors, for the variants that use them"
    )
    args = parser.parse_args(argv)
    for name in args.variants:
        if CHOICES[name].get(f"{TOK2VEC}.include_static_vectors") == "true" and not args.vectors:
            parser.error(f"variant {name!r} uses static vectors: give --vectors")
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.variants:
        dev, test, invalid, speed, seconds = [], [], [], [], []
        for seed in args.seeds:
            folder = args.training_dir / name.replace(" ", "_").replace(",", "") / str(seed)
            config, corpus = args.config, args.corpus
            overrides = dict(CHOICES[name])
            if args.vectors:
                overrides["paths.vectors"] = str(args.vectors)
            run_seconds, _ = train(
                config, corpus, folder, seed, args.threads, overrides, steps=args.steps
            )
            seconds.append(run_seconds)
            nlp = spacy.load(folder / "model-best")
            dev.append(score(nlp, args.corpus / "dev.spacy").f)
            test_score = score(nlp, args.corpus / "test.spacy")
            test.append(test_score.f)
            invalid.append(test_score.invalid_rate)
            speed.append(test_score.words_per_second)
            print(f"{name} seed {seed}: dev {dev[-1]:.4f} test {test[-1]:.4f}", flush=True)
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
    write_lines(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
