"""Presets and tagger together: F1 with entities fixed before the tagger, three ways.

Two kinds of presets on the test set: (a) right ones, a random share of the gold entities
(each entity kept with probability `--share`, seeded), as a person or an exact dictionary
would set them, scored on the other entities (gold and predicted entities equal to a preset
are left out on both sides); (b) an `entity_ruler` built from the training set (entity strings
seen at least `--min-count` times whose commonest label has at least `--min-share` of them),
scored on every entity. Each for `bilstm_crf` decoding around the presets (`presets`
"fixed"), keeping and dropping ("keep"), and spaCy's `ner` with the same presets before it;
and each system alone. Docs are the gold texts tokenized by each pipeline, as `spacy evaluate`
reads them; entities are compared by their characters.

Usage: python benchmarks/scripts/presets_eval.py TAGGER NER TRAIN.spacy TEST.spacy OUT.md
"""

import argparse
import datetime
import platform
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402

Entity = tuple[int, int, int, str]  # doc index, start_char, end_char, label


def gold_docs(path: Path, nlp: Language) -> list[Doc]:
    return list(DocBin().from_disk(path).get_docs(nlp.vocab))


def bare(gold: Sequence[Doc], nlp: Language) -> list[Doc]:
    """The gold texts as `nlp` tokenizes them."""
    return [nlp.make_doc(doc.text) for doc in gold]


def entities(docs: Iterable[Doc]) -> set[Entity]:
    return {(i, e.start_char, e.end_char, e.label_) for i, doc in enumerate(docs) for e in doc.ents}


def prf(predicted: set[Entity], gold: set[Entity]) -> tuple[float, float, float]:
    hits = len(predicted & gold)
    p = hits / len(predicted) if predicted else 0.0
    r = hits / len(gold) if gold else 0.0
    return 100 * p, 100 * r, (200 * p * r / (p + r) if p + r else 0.0)


def same_where(matches: set[Entity], predicted: set[Entity], gold: set[Entity]) -> int:
    """How many `matches` have the same entities over their characters in `predicted` as in
    `gold` (the predictions are right there)."""

    def over(found: set[Entity]) -> dict[int, list[Entity]]:
        by_doc: dict[int, list[Entity]] = defaultdict(list)
        for entity in found:
            by_doc[entity[0]].append(entity)
        return by_doc

    ours, theirs = over(predicted), over(gold)
    count = 0
    for doc, start, end, _ in matches:
        near = [e for e in ours[doc] if e[1] < end and start < e[2]]
        want = [e for e in theirs[doc] if e[1] < end and start < e[2]]
        count += sorted(near) == sorted(want)
    return count


def ruler_patterns(train: Sequence[Doc], min_count: int, min_share: float) -> list[dict]:
    """Entity strings seen at least `min_count` times whose commonest label has `min_share`."""
    labels: dict[str, Counter] = defaultdict(Counter)
    for doc in train:
        for ent in doc.ents:
            labels[ent.text][ent.label_] += 1
    patterns = []
    for text, counts in labels.items():
        label, top = counts.most_common(1)[0]
        if sum(counts.values()) >= min_count and top >= min_share * sum(counts.values()):
            patterns.append({"label": label, "pattern": text})
    return patterns


def run(nlp: Language, docs: list[Doc], presets: str | None = None) -> tuple[list[Doc], float]:
    """Docs through the pipeline's `ner` component alone (its `presets` setting when given),
    and the seconds it took."""
    pipe = nlp.get_pipe("ner")
    saved = pipe.cfg.get("presets") if presets else None
    if presets:
        pipe.cfg["presets"] = presets
    start = time.perf_counter()
    try:
        out = list(pipe.pipe(docs, batch_size=256))
    finally:
        if presets:
            pipe.cfg["presets"] = saved
    return out, time.perf_counter() - start


def with_presets(docs: list[Doc], chosen: list[list[tuple[int, int, str]]]) -> list[Doc]:
    """`doc.ents = ` the chosen entities (characters) that fall on token boundaries."""
    for doc, spans in zip(docs, chosen):
        found = [doc.char_span(s, e, label=label) for s, e, label in spans]
        doc.set_ents([span for span in found if span is not None], default="outside")
    return docs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tagger", type=Path, help="a bilstm_crf pipeline (component 'ner')")
    parser.add_argument("ner", type=Path, help="a spaCy ner pipeline (configs/ner.cfg)")
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--min-share", type=float, default=0.9)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    systems = {"tagger": spacy.load(args.tagger), "ner": spacy.load(args.ner)}
    systems["tagger"].get_pipe("ner").cfg["threads"] = 1
    gold = gold_docs(args.test, systems["tagger"])
    truth = entities(gold)
    rng = random.Random(args.seed)
    fixed = [
        [(e.start_char, e.end_char, e.label_) for e in doc.ents if rng.random() < args.share]
        for doc in gold
    ]
    given = {(i, s, e, label) for i, spans in enumerate(fixed) for s, e, label in spans}
    rest = truth - given
    train = gold_docs(args.train, systems["tagger"])
    patterns = ruler_patterns(train, args.min_count, args.min_share)
    lines = [f"# Presets and tagger together: {args.title}", ""]
    notes: list[str] = []
    lines += [
        f"Command: python {' '.join(sys.argv)}",
        f"Date: {datetime.date.today()}; CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; "
        f"Python {platform.python_version()}",
        f"Test: {len(gold):,} docs, {sum(map(len, gold)):,} words, {len(truth):,} entities; "
        f"(a) {len(given):,} preset ({len(given) / len(truth):.1%}, seed {args.seed}), "
        f"scored on the other {len(rest):,}; (b) ruler of {len(patterns):,} patterns.",
        "",
        "| presets | system | P | R | F1 | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]

    def row(kind: str, name: str, docs: list[Doc], seconds: float, scored: set, leave: set) -> None:
        p, r, f = prf(entities(docs) - leave, scored)
        lines.append(f"| {kind} | {name} | {p:.2f} | {r:.2f} | {f:.2f} | {seconds:.1f} |")
        print(lines[-1], flush=True)

    outputs = {}
    for name, nlp in systems.items():
        alone, seconds = run(nlp, bare(gold, nlp))
        outputs[name] = entities(alone)
        row("none", f"{name} alone", alone, seconds, truth, set())
        row("(a) gold", f"{name} alone", alone, seconds, rest, given)
    for name, presets in (
        ("bilstm_crf, decode around", "fixed"),
        ("bilstm_crf, keep and drop", "keep"),
    ):
        docs = with_presets(bare(gold, systems["tagger"]), fixed)
        row("(a) gold", name, *run(systems["tagger"], docs, presets), rest, given)
    docs = with_presets(bare(gold, systems["ner"]), fixed)
    row("(a) gold", "spaCy ner, around", *run(systems["ner"], docs), rest, given)
    for name, nlp in systems.items():
        ruler_nlp = spacy.blank(nlp.lang, vocab=nlp.vocab)
        ruler = ruler_nlp.add_pipe("entity_ruler")
        ruler.add_patterns(patterns)
        ruled = [ruler(doc) for doc in bare(gold, nlp)]
        if name == "tagger":
            row("(b) ruler", "ruler alone", ruled, 0.0, truth, set())
            matches = entities(ruled)
            right = len(matches & truth) / max(1, len(matches))
            tagger = same_where(matches, outputs["tagger"], truth) / max(1, len(matches))
            notes.append(
                f"The ruler's {len(matches):,} matches on test: {right:.1%} are gold entities; "
                f"the tagger alone has exactly the gold entities over {tagger:.1%} of them."
            )
            for label, presets in (
                ("bilstm_crf, decode around", "fixed"),
                ("bilstm_crf, keep and drop", "keep"),
            ):
                copies = [doc.copy() for doc in ruled]
                row("(b) ruler", label, *run(nlp, copies, presets), truth, set())
        else:
            row("(b) ruler", "spaCy ner, around", *run(nlp, ruled), truth, set())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines + [""] + notes) + "\n", encoding="utf-8")
    print(*notes, sep="\n")
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
