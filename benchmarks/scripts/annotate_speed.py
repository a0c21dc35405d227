"""Time the batch annotator against plain `nlp.pipe`, on one machine, in one run.

Runs, on the same texts: `nlp.pipe` in this process, the local engine with 1 and 2 workers,
and the Ray engine with 1 and 2 actors (a local Ray cluster started by each run, or the one at
RAY_ADDRESS). For each it prints the start-up time and the steady-state rate apart:

- start-up: seconds from the call until the first shard is written (loading the pipeline,
  forking workers or starting Ray and its actors); for plain `nlp.pipe`, loading the pipeline;
- steady: texts/s and words/s over the rows after the first shard (after the first
  `--shard-size` docs for `nlp.pipe`), from the first shard's time to the last one's, and
  the CPU the machine's processes used meanwhile, in cores (CPU seconds per second, from
  /proc on Linux): the workers or actors, this process (the driver: reading, writing, Ray
  Data's scheduling thread), and every other process (Ray's own, or any other job). Ray
  actors may have finished a few blocks more by the time the first shard is written, which
  flatters runs of only a few blocks per actor: judge Ray on the full 100,000 texts.

The texts come from `--data` (a `.spacy` file, a CoNLL-style file, JSONL with a `text` field, or
plain text, one text a line; with `--sentences`, each sentence of a `.spacy` file's docs),
repeated to reach `--texts` (default 100,000); without `--data`, generated sentences. Without
`--model`, a tiny pipeline is trained in a temporary folder (its rates say little about a real
model). The target on 2 cores: 2 workers (or actors) reach 1.8x the steady rate of one.
Timings mean little while other processes keep the cores busy.

Usage: python benchmarks/scripts/annotate_speed.py [--model PATH] [--data PATH] [--sentences]
    [--texts N] [--batch-size N] [--shard-size N] [--threads N] [--engines local,ray]
"""

import argparse
import datetime
import importlib.util
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import spacy
import srsly
import torch
from spacy.tokens import DocBin
from spacy.training import Example

from spacy_bilstm_crf.annotate import ShardReport, annotate
from spacy_bilstm_crf.train.conll import read_conll

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402

TARGET = 1.8
NAMES = ["Shaka Khan", "Ada Lovelace", "Grace Hopper", "Alan Turing"]
PLACES = ["London", "Berlin", "Paris", "New York", "Lagos"]
TEMPLATES = [
    "{name} lives in {place}.",
    "Who is {name}?",
    "I like {place} and {other}, but {name} moved to {other} last year.",
    "Nothing to see here, said {name}, who flew from {place} to {other} on Monday morning.",
]


@dataclass
class Result:
    """One run's start-up seconds and steady-state rates."""

    name: str
    engine: str
    workers: int
    startup: float
    texts_per_s: float
    words_per_s: float
    total_s: float
    words: int
    cores: dict[str, float] | None = None


def load_texts(path: Path, sentences: bool = False) -> list[str]:
    """The texts of a `.spacy`, CoNLL-style, JSONL or plain-text file; with `sentences`, each
    sentence of a `.spacy` file's docs is a text."""
    if sentences and path.suffix != ".spacy":
        raise ValueError(f"--sentences needs a .spacy file, got {path}")
    if path.suffix == ".spacy":
        docs = DocBin().from_disk(path).get_docs(spacy.blank("xx").vocab)
        if sentences:
            return [sent.text.strip() for doc in docs for sent in doc.sents]
        return [doc.text for doc in docs]
    if path.suffix in (".jsonl", ".json"):
        return [record["text"] for record in srsly.read_jsonl(path)]
    if path.suffix in (".conll", ".iob", ".conllu", ".tsv") or "conll" in path.name.lower():
        return [" ".join(sentence.words) for sentence in read_conll(path)]
    return [line.strip() for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def generated_texts(count: int) -> list[str]:
    """Sentences of 4 to 16 words with names and places, the same for every run."""
    rng = random.Random(0)
    texts = []
    for _ in range(count):
        places = rng.sample(PLACES, 2)
        texts.append(
            rng.choice(TEMPLATES).format(name=rng.choice(NAMES), place=places[0], other=places[1])
        )
    return texts


def train_tiny_model(folder: Path) -> Path:
    """A small `bilstm_crf` pipeline with scores, overfit on a few sentences, saved to disk."""
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "bilstm_crf",
        config={
            "confidence": True,
            "model": {"hidden_width": 32, "tok2vec": {"rows": [500, 200, 200, 200]}},
        },
    )
    data = [
        ("Who is Shaka Khan?", [(7, 17, "PERSON")]),
        ("I like London and Berlin.", [(7, 13, "LOC"), (18, 24, "LOC")]),
        ("Shaka Khan lives in Berlin.", [(0, 10, "PERSON"), (20, 26, "LOC")]),
    ]
    examples = [Example.from_dict(nlp.make_doc(t), {"entities": e}) for t, e in data]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(40):
        nlp.update(examples, sgd=optimizer)
    nlp.to_disk(folder / "model")
    return folder / "model"


def time_plain(model: str, texts: list[str], batch_size: int, warmup: int) -> Result:
    """`nlp.pipe` in this process: start-up is the load; steady is after `warmup` docs."""
    start = time.perf_counter()
    nlp = spacy.load(model)
    loaded = time.perf_counter()
    words = total = 0
    for i, doc in enumerate(nlp.pipe(texts, batch_size=batch_size)):
        if i == warmup - 1:
            warm, words = time.perf_counter(), 0
        words += len(doc)
        total += len(doc)
    end = time.perf_counter()
    steady = end - warm
    rate = (len(texts) - warmup) / steady
    return Result(
        "nlp.pipe, 1 process", "pipe", 1, loaded - start, rate, words / steady, end - start, total
    )


def process_cpu() -> dict[int, tuple[str, int, float]]:
    """Per process: its command line, parent and CPU seconds so far (user and system), from
    /proc; empty where there is no /proc."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (
            command,
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / tick,
        )
    return found


def cores_used(
    before: dict[int, tuple[str, int, float]],
    after: dict[int, tuple[str, int, float]],
    seconds: float,
) -> dict[str, float]:
    """CPU seconds per second between two `process_cpu` snapshots, for the workers (this
    process's children, or Ray's annotating actors), this process, and all others."""
    me = os.getpid()
    used = {"workers": 0.0, "driver": 0.0, "other": 0.0}
    for pid, (command, parent, cpu) in after.items():
        spent = cpu - before.get(pid, (command, parent, 0.0))[2]
        if pid == me:
            used["driver"] += spent
        elif parent == me or "RayAnnotator" in command:
            used["workers"] += spent
        else:
            used["other"] += spent
    return {kind: value / seconds for kind, value in used.items()}


def time_annotate(
    model: str, source: Path, folder: Path, engine: str, workers: int, **settings
) -> Result:
    """One `annotate` run: start-up until the first shard; steady over the shards after it."""
    reports: list[ShardReport] = []
    snapshots: dict[str, dict[int, tuple[str, int, float]]] = {}

    def on_shard(report: ShardReport) -> None:
        reports.append(report)
        snapshots["last" if "first" in snapshots else "first"] = process_cpu()

    summary = annotate(
        model, source, folder, engine=engine, workers=workers, on_shard=on_shard, **settings
    )
    first, last = reports[0], reports[-1]
    seconds = last.elapsed - first.elapsed
    rows = sum(report.rows for report in reports[1:])
    words = sum(report.words for report in reports[1:])
    noun = ("worker" if engine == "local" else "actor") + ("s" if workers > 1 else "")
    name = f"{engine}, {workers} {noun}"
    return Result(
        name,
        engine,
        workers,
        first.elapsed,
        rows / seconds,
        words / seconds,
        summary.seconds,
        summary.words,
        cores_used(snapshots["first"], snapshots["last"], seconds) if snapshots["first"] else None,
    )


def speedups(results: list[Result]) -> dict[str, float]:
    """Per engine, the steady rate of 2 workers over that of one."""
    rates = {(r.engine, r.workers): r.texts_per_s for r in results}
    return {
        engine: rates[(engine, 2)] / rates[(engine, 1)]
        for engine, workers in rates
        if workers == 2 and (engine, 1) in rates
    }


def markdown(results: list[Result], caption: str) -> str:
    """The results as a Markdown table under its caption, with speed-ups over one worker."""
    one = {r.engine: r.texts_per_s for r in results if r.workers == 1}
    lines = [
        caption,
        "",
        "| run | start-up s | steady texts/s | steady words/s | x one worker | total s "
        "| steady cores: workers, driver, other |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cores = "-" if not r.cores else ", ".join(f"{v:.2f}" for v in r.cores.values())
        lines.append(
            f"| {r.name} | {r.startup:.1f} | {r.texts_per_s:,.0f} | {r.words_per_s:,.0f} | "
            f"{r.texts_per_s / one[r.engine]:.2f} | {r.total_s:.1f} | {cores} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pipeline folder or package (default: a tiny one)")
    parser.add_argument("--data", type=Path, help=".spacy, CoNLL, JSONL or text file of texts")
    parser.add_argument(
        "--sentences", action="store_true", help="each sentence of a .spacy file is a text"
    )
    parser.add_argument("--texts", type=int, default=100_000, help="texts to annotate")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, help="rows per shard (default: texts / 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    parser.add_argument("--engines", default="local,ray", help="comma-separated engines")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    engines = args.engines.split(",")
    if "ray" in engines and importlib.util.find_spec("ray") is None:
        print('Ray is not installed (pip install "spacy-bilstm-crf[ray]"): skipping it.')
        engines.remove("ray")
    shard_size = args.shard_size or max(1, args.texts // 20)
    if args.texts < 2 * shard_size:
        raise SystemExit(
            "--texts must be at least twice --shard-size: the steady rate is after one."
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model or str(train_tiny_model(folder))
        base = load_texts(args.data, args.sentences) if args.data else generated_texts(1_000)
        texts = (base * (args.texts // len(base) + 1))[: args.texts]
        source = folder / "texts.jsonl"
        srsly.write_jsonl(source, ({"id": i, "text": t} for i, t in enumerate(texts)))
        common = {"batch_size": args.batch_size, "shard_size": shard_size}
        results = [time_plain(model, texts, args.batch_size, shard_size)]
        for engine in engines:
            for workers in (1, 2):
                out = folder / f"{engine}-{workers}"
                results.append(time_annotate(model, source, out, engine, workers, **common))
    caption = (
        f"{len(texts):,} texts ({results[0].words:,} words) from "
        f"{args.data or 'generated sentences'}{' (its sentences)' if args.sentences else ''}, "
        f"model {args.model or 'tiny (trained here)'}, batch {args.batch_size}, shards of "
        f"{shard_size:,} rows; {cpu_model()}, {os.cpu_count()} cores; torch threads "
        f"{args.threads} in this process, 1 per worker or actor; "
        f"{datetime.date.today().isoformat()}. Start-up: seconds until the first shard is "
        "written (nlp.pipe: loading the pipeline); steady: rates over the rows after it."
    )
    print(markdown(results, caption))
    for engine, ratio in speedups(results).items():
        verdict = "meets" if ratio >= TARGET else "misses"
        two = "2 workers" if engine == "local" else "2 actors"
        print(f"\n{engine}: {two} run at {ratio:.2f}x one, which {verdict} the {TARGET}x target.")


if __name__ == "__main__":
    main()
