"""Simulate the annotation loop on a labelled corpus: the gold labels stand in for a person.

    python benchmarks/scripts/active_learning.py corpus/conll2003 OUTPUT
        --vectors corpus/conll2003/vectors --strategies random sentence span --seeds 0 1 2

The training sentences are the pool. Round 0 labels a random `--start` share of the pool's
tokens (whole sentences, the same for every strategy of a seed); each later round adds about
`--step` of the tokens, chosen by the strategy with the product's own selection code
(`BiLSTMCRFTagger.analyze` and `spacy_bilstm_crf.active.uncertainty`), until `--until`.
Every round trains the model further, warm-started from the last round's weights, for a
fixed `--round-steps` steps, then scores the test set; its averaged weights, the ones it
saves and scores with, choose the next round's units. Strategies:

- `random`: random sentences;
- `sentence`: the sentences of highest `--measure` (default MNLP);
- `span`: regions around uncertain tokens (`--unit span`), labelled alone: the rest of their
  sentence stays missing and the model trains on partial labels. The simulated person labels
  any gold entity that crosses a region's edge in full, and those tokens count as reviewed.
- `full`: all the pool at once for the loop's total steps: the line the curves are
  measured against (its pipeline is kept in `OUTPUT/full-SEED/model`).

Cost is counted as a person pays it: the tokens reviewed (only the regions' tokens for
spans), the sentences touched, and what the tasks show: a sentence task shows its sentence,
a span task the sentence around its region (two regions of a sentence are two tasks and show
it twice), so tokens shown and tasks count what a person reads.

Each run has a folder `OUTPUT/STRATEGY-SEED`; each round's weights, the labelled
state and a JSON line of results are written before the next round starts, so a stopped
sweep (Ctrl-C: exit 130) resumes where it stopped when run again, and finished runs are
skipped. `active_learning_report.py` turns the runs into the table and the plot.
"""

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy
import spacy
import torch
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.training.initialize import load_vectors_into_model
from spacy.util import fix_random_seed, load_config, load_model_from_config, registry

from spacy_bilstm_crf.active.uncertainty import choose, piece_units, same_text, span_units

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ("random", "sentence", "span", "full")


def sentences(path: Path, vocab: Any) -> list[Doc]:
    """The sentences of a `.spacy` file, each a doc of its own with its gold entities."""
    docs = DocBin().from_disk(path).get_docs(vocab)
    found = []
    for doc in docs:
        parts = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
        found += [part.as_doc() for part in parts if len(part)]
    return found


def same_tokens(nlp: spacy.Language, gold: Doc) -> Doc:
    """A doc with the gold doc's tokens and no annotation: what the model reads."""
    spaces = [bool(token.whitespace_) for token in gold]
    return Doc(nlp.vocab, words=[token.text for token in gold], spaces=spaces)


def partial_example(nlp: spacy.Language, gold: Doc, reviewed: numpy.ndarray) -> Example:
    """The gold sentence with labels on the `reviewed` tokens only; the rest missing."""
    iob = [token.ent_iob_ for token in gold]
    tags = [
        (f"{iob[i]}-{token.ent_type_}" if iob[i] in ("B", "I") else "O") if reviewed[i] else None
        for i, token in enumerate(gold)
    ]
    for i, tag in enumerate(tags):  # an entity whose start is missing starts where it is seen
        if tag and tag.startswith("I-") and (i == 0 or tags[i - 1] is None):
            tags[i] = "B-" + tag[2:]
    words = [token.text for token in gold]
    spaces = [bool(token.whitespace_) for token in gold]
    reference = Doc(nlp.vocab, words=words, spaces=spaces, ents=tags)
    return Example(same_tokens(nlp, gold), reference)


def gold_entity_bounds(gold: Doc) -> list[tuple[int, int]]:
    return [(ent.start, ent.end) for ent in gold.ents]


def widen_to_entities(start: int, end: int, entities: list[tuple[int, int]]) -> tuple[int, int]:
    """The region grown to cover every gold entity that crosses its edges."""
    for first, last in entities:
        if first < end and last > start:
            start, end = min(start, first), max(end, last)
    return start, end


class Loop:
    """The labelled state of the pool and the model, round after round."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        config = load_config(args.config)
        config["training"]["optimizer"]["learn_rate"]["total_steps"] = args.round_steps
        self.config = config
        self.nlp = load_model_from_config(config, auto_fill=True, validate=True)
        if args.vectors is not None:
            load_vectors_into_model(self.nlp, str(args.vectors))
        self.pipe = self.nlp.get_pipe("ner")
        self.pipe.cfg["threads"] = args.threads
        self.pool = sentences(args.corpus / "train.spacy", self.nlp.vocab)
        self.test = [
            Example(same_tokens(self.nlp, doc), doc)
            for doc in sentences(args.corpus / "test.spacy", self.nlp.vocab)
        ]
        self.sizes = numpy.asarray([len(doc) for doc in self.pool])
        self.total = int(self.sizes.sum())
        self.reviewed = [numpy.zeros(len(doc), dtype=bool) for doc in self.pool]
        self.shown = {"tasks": 0, "tokens": 0}
        labels = sorted({ent.label_ for doc in self.pool for ent in doc.ents})
        for label in labels:
            self.pipe.add_label(label)
        self.batcher = registry.resolve({"b": config["training"]["batcher"]})["b"]

    def examples(self) -> list[Example]:
        """Training examples: every pool sentence with a reviewed token, partially labelled
        where it was not reviewed whole."""
        found = []
        for gold, mask in zip(self.pool, self.reviewed):
            if mask.all():
                found.append(Example(same_tokens(self.nlp, gold), gold))
            elif mask.any():
                found.append(partial_example(self.nlp, gold, mask))
        return found

    def batches(self, examples: list[Example], rng: random.Random) -> Iterator[list[Example]]:
        while True:
            rng.shuffle(examples)
            yield from self.batcher(examples)

    def train(self, round_index: int, steps: int, previous: Path | None) -> tuple[float, Any]:
        """Train `steps` steps from the last round's weights (or from scratch); returns the
        test F1 of the averaged weights, and the optimizer that holds them."""
        seed = 1000 * self.args.seed + round_index
        fix_random_seed(seed)
        examples = self.examples()
        if previous is None:
            self.nlp.initialize(lambda: examples[:200])
        else:
            self.pipe.from_disk(previous / "ner", exclude=["vocab"])
        schedule = dict(self.config["training"]["optimizer"])
        schedule["learn_rate"] = {**schedule["learn_rate"], "total_steps": steps}
        optimizer = registry.resolve({"o": schedule})["o"]
        batches = self.batches(examples, random.Random(seed))
        drop = self.config["training"]["dropout"]
        for _ in range(steps):
            self.nlp.update(next(batches), drop=drop, sgd=optimizer)
            optimizer.step_schedules()
        with self.nlp.use_params(optimizer.averages):
            f1 = float(self.nlp.evaluate(self.test)["ents_f"] or 0.0)
        return f1, optimizer

    def label_random(self, budget: int, rng: numpy.random.Generator) -> None:
        """Whole random sentences not yet reviewed, up to `budget` tokens."""
        for i in rng.permutation(len(self.pool)):
            if budget <= 0:
                break
            if not self.reviewed[i].any() and self.sizes[i] <= budget:
                self.reviewed[i][:] = True
                budget -= int(self.sizes[i])
                self.show(i)

    def label_by_strategy(self, budget: int, rng: numpy.random.Generator) -> None:
        """Units chosen by the strategy up to `budget` tokens, the model scoring the pool."""
        strategy = self.args.strategy
        candidates = [i for i, mask in enumerate(self.reviewed) if not mask.all()]
        if strategy == "sentence":
            candidates = [i for i in candidates if not self.reviewed[i].any()]
        units, owners, keys = [], [], []
        batch = 256
        for start in range(0, len(candidates), batch):
            chunk = candidates[start : start + batch]
            docs = [same_tokens(self.nlp, self.pool[i]) for i in chunk]
            _, analyses = self.pipe.analyze(docs)
            for i, doc, analysis in zip(chunk, docs, analyses):
                if strategy == "sentence":
                    pieces = [(p.start, p.end, p.analyses[0][1]) for p in analysis.pieces]
                    found = piece_units(pieces, analysis.marginals, self.args.measure, rng)
                else:
                    found = span_units(
                        analysis.marginals,
                        [(0, len(doc))],
                        self.args.measure if self.args.measure != "mnlp" else "lc",
                        rng,
                        self.reviewed[i],
                    )
                units += found
                owners += [i] * len(found)
                text = same_text(doc.text)
                keys += [(text, unit.start, unit.end) for unit in found]
        keys = None if self.args.keep_duplicates else keys
        for index in choose(units, tokens=budget, keys=keys):
            owner, unit = owners[index], units[index]
            start, end = unit.start, unit.end
            if strategy == "span":
                start, end = widen_to_entities(start, end, gold_entity_bounds(self.pool[owner]))
            self.reviewed[owner][start:end] = True
            self.show(owner)

    def show(self, sentence: int) -> None:
        """Count a task that shows pool sentence `sentence` to the person."""
        self.shown["tasks"] += 1
        self.shown["tokens"] += int(self.sizes[sentence])

    def label_next(self, round_index: int) -> None:
        """Label what round `round_index + 1` adds, chosen by the model as it is now."""
        args = self.args
        budget = round((round_index + 1) * args.step * self.total + args.start * self.total)
        budget -= self.cost()[0]
        rng = numpy.random.default_rng([args.seed, round_index])
        if args.strategy == "random":
            self.label_random(budget, rng)
        else:
            self.label_by_strategy(budget, rng)

    def cost(self) -> tuple[int, int]:
        """Tokens reviewed and sentences touched so far."""
        tokens = int(sum(int(mask.sum()) for mask in self.reviewed))
        return tokens, int(sum(bool(mask.any()) for mask in self.reviewed))

    def save_state(self, folder: Path) -> None:
        runs = {
            str(i): numpy.flatnonzero(numpy.diff(numpy.r_[0, mask.astype(int), 0])).tolist()
            for i, mask in enumerate(self.reviewed)
            if mask.any()
        }
        _write_json(folder / "reviewed.json", runs)
        _write_json(folder / "shown.json", self.shown)

    def load_state(self, folder: Path) -> None:
        runs = json.loads((folder / "reviewed.json").read_text(encoding="utf8"))
        for mask in self.reviewed:
            mask[:] = False
        for key, bounds in runs.items():
            for start, end in zip(bounds[::2], bounds[1::2]):
                self.reviewed[int(key)][start:end] = True
        self.shown = json.loads((folder / "shown.json").read_text(encoding="utf8"))


def _write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so that a stopped run never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data), encoding="utf8")
    os.replace(temporary, path)


def done_rounds(results: Path) -> list[dict]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text(encoding="utf8").splitlines() if line]


def run_loop(args: argparse.Namespace) -> None:
    loop = Loop(args)
    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "results.jsonl"
    rounds = done_rounds(results)
    rng = numpy.random.default_rng(args.seed)
    if rounds:
        last = args.output / f"round-{len(rounds) - 1:02d}"
        loop.load_state(last)
        previous: Path | None = last
        print(f"resuming after round {len(rounds) - 1}", file=sys.stderr, flush=True)
        if loop.cost()[0] == rounds[-1]["tokens"]:  # a run that ended there: label the next
            loop.pipe.from_disk(last / "ner", exclude=["vocab"])  # its saved (averaged) weights
            loop.label_next(len(rounds) - 1)
            loop.save_state(last)
    else:
        loop.label_random(round(args.start * loop.total), rng)
        previous = None
    round_index = len(rounds)
    while True:
        begin = time.perf_counter()
        tokens, touched = loop.cost()
        shown = dict(loop.shown)
        f1, optimizer = loop.train(round_index, args.round_steps, previous)
        folder = args.output / f"round-{round_index:02d}"
        folder.mkdir(exist_ok=True)
        share = tokens / loop.total
        more = round_index + 1 < rounds_planned(args)
        # The saved (averaged) weights choose, as `select` with the saved pipeline would, and
        # as a resumed run does; also after the last round, so that a longer run resumes.
        with loop.nlp.use_params(optimizer.averages):
            loop.pipe.to_disk(folder / "ner", exclude=["vocab"])
            loop.label_next(round_index)
        loop.save_state(folder)
        record = {
            "round": round_index,
            "strategy": run_name(args.strategy, args.measure, args.keep_duplicates),
            "seed": args.seed,
            "tokens": tokens,
            "share": share,
            "sentences": touched,
            "tasks": shown["tasks"],
            "shown_tokens": shown["tokens"],
            "pool_tokens": loop.total,
            "pool_sentences": len(loop.pool),
            "test_f1": f1,
            "steps": args.round_steps * (round_index + 1),
            "seconds": round(time.perf_counter() - begin, 1),
        }
        with results.open("a", encoding="utf8") as file_:
            file_.write(json.dumps(record) + "\n")
        print(
            f"round {round_index}: {100 * share:.1f}% of tokens ({tokens:,}), {touched:,} "
            f"sentences; shown {shown['tokens']:,} tokens in {shown['tasks']:,} tasks; "
            f"test F1 {100 * f1:.2f}, {record['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if not more:
            break
        previous = folder
        round_index += 1


def run_full(args: argparse.Namespace) -> None:
    """All the pool, one run of the loop's total steps: the reference line."""
    loop = Loop(args)
    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "results.jsonl"
    if done_rounds(results):
        print(f"{results} exists: nothing to do", file=sys.stderr)
        return
    steps = rounds_planned(args) * args.round_steps
    for mask in loop.reviewed:
        mask[:] = True
    print(f"full data: {steps} steps on {loop.total:,} tokens", file=sys.stderr, flush=True)
    begin = time.perf_counter()
    f1, optimizer = loop.train(0, steps, None)
    with loop.nlp.use_params(optimizer.averages):
        loop.nlp.to_disk(args.output / "model")  # for select_speed.py
    record = {
        "strategy": "full",
        "seed": args.seed,
        "tokens": loop.total,
        "share": 1.0,
        "test_f1": f1,
        "steps": steps,
        "seconds": round(time.perf_counter() - begin, 1),
    }
    _write_json(args.output / "full.json", record)
    results.write_text(json.dumps(record) + "\n", encoding="utf8")
    print(f"full data, {steps} steps: test F1 {100 * f1:.2f}", file=sys.stderr)


def run_name(strategy: str, measure: str, keep_duplicates: bool = False) -> str:
    """The run's name: the strategy, the measure of a sentence run other than MNLP, and
    `_repeats` for a run that may choose a text twice in a round."""
    name = f"{strategy}_{measure}" if strategy == "sentence" and measure != "mnlp" else strategy
    return f"{name}_repeats" if keep_duplicates and strategy in ("sentence", "span") else name


def rounds_planned(args: argparse.Namespace) -> int:
    """Round 0 and one per `step` up to `until`: a strategy that finds nothing more to label
    (spans, once the model is sure of the rest) still trains its rounds, on what it has."""
    return 1 + round((args.until - args.start) / args.step)


def finished(run: argparse.Namespace) -> bool:
    """Whether the run has done its last round."""
    return len(done_rounds(run.output / "results.jsonl")) >= rounds_planned(run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="a folder with train.spacy and test.spacy")
    parser.add_argument("output", type=Path, help="a folder for the runs' folders")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--measure", choices=("lc", "mnlp", "entropy"), default="mnlp")
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="let a round choose texts that are the same but for case and digits",
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "bilstm_crf.cfg")
    parser.add_argument("--vectors", type=Path, help="a pipeline or vectors folder")
    parser.add_argument("--start", type=float, default=0.02, help="share of tokens in round 0")
    parser.add_argument("--step", type=float, default=0.02, help="share of tokens per round")
    parser.add_argument("--until", type=float, default=0.30, help="the last round's share")
    parser.add_argument("--round-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        for seed in args.seeds:
            for strategy in args.strategies:
                run = argparse.Namespace(**vars(args), seed=seed, strategy=strategy)
                name = run_name(strategy, args.measure, args.keep_duplicates)
                run.output = args.output / f"{name}-{seed}"
                if strategy == "full":
                    run_full(run)
                elif finished(run):
                    print(f"{run.output}: done", file=sys.stderr)
                else:
                    print(f"{run.output}: {strategy}, seed {seed}", file=sys.stderr, flush=True)
                    run_loop(run)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
