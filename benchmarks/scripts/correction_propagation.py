"""Correction propagation: how many actions a simulated person needs to correct a tagger's
output to gold, sentence by sentence, with and without re-decoding under the fixes so far.

The person reads each test sentence and fixes the first error in reading order, one action per
entity-level fix: remove a spurious entity, add a missing one, relabel one, or move its
boundaries (a wrong span with a wrong label costs both). Without propagation the other entities
stay as predicted, so the count is that of the first output. With propagation (Kristjansson et
al., AAAI 2004; Culotta and McCallum, AAAI 2005), the CRF decodes the sentence again after each
action, under every fix so far (an entity fixed, tokens outside; a moved boundary also leaves
the tokens it drops outside, unless they belong to another gold entity) and the tokens already
read (everything before the fix, as it is: right). With clicks, an added entity is one click on its
first token with its label (the token lies inside an entity of that label) and the CRF
completes the span; a wrong completion costs the fixes that follow. spaCy's `ner` gets the same
person, fixes given as preset entities and blocked tokens, which it decodes around; it has no
way to take a click. Sentences are decoded alone, their texts tokenized by the pipeline.

Usage: python benchmarks/scripts/correction_propagation.py TEST.spacy OUT.md
    --tagger NAME=PATH [--tagger ...] [--ner NAME=PATH]
"""

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span

from spacy_bilstm_crf.ml import crf_ops
from spacy_bilstm_crf.pipeline.spans import read_entities
from spacy_bilstm_crf.tag_sets import TagSets

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from speed import cpu_model  # noqa: E402

Ent = tuple[int, int, str]  # start, end, label


def overlaps(a: Ent, b: Ent) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def first_error(pred: set[Ent], gold: set[Ent]) -> tuple[int, Ent | None, Ent | None] | None:
    """The first discrepancy in reading order: its start, and the predicted entity and the
    gold entity it concerns (a pair that overlap when there is one), or None."""
    spurious, missing = sorted(pred - gold), sorted(gold - pred)
    wrong = sorted([(p[0], p[1], 0, p) for p in spurious] + [(g[0], g[1], 1, g) for g in missing])
    if not wrong:
        return None
    start, _, kind, first = wrong[0]
    if kind == 0:
        return start, first, next((g for g in missing if overlaps(first, g)), None)
    return start, next((p for p in spurious if overlaps(p, first)), None), first


def cost(predicted: Ent | None, gold: Ent | None) -> int:
    """Actions to fix one error: move the boundaries and relabel, or remove, or add."""
    if predicted is not None and gold is not None:
        return int(predicted[:2] != gold[:2]) + int(predicted[2] != gold[2])
    return 1


def static_actions(pred: set[Ent], gold: set[Ent]) -> int:
    """Actions without propagation: each fix changes only the entity it is about."""
    actions, pred = 0, set(pred)
    while (error := first_error(pred, gold)) is not None:
        _, p, g = error
        actions += cost(p, g)
        pred = (pred - {p}) | ({g} if g is not None else set())
    return actions


class Session:
    """One sentence being corrected with propagation: its gold entities, the fixes so far and
    the actions they cost."""

    def __init__(self, gold: set[Ent], length: int) -> None:
        self.gold, self.length = gold, length
        # ("read", token): tokens before it read and right; ("entity", (start, end, label)),
        # ("outside", (start, end)), ("click", (token, label)): the person's fixes.
        self.fixes: list[tuple] = []
        self.actions = 0
        self.done = False
        self.click: Ent | None = None  # the gold entity of the last click, to check

    def act(self, pred: set[Ent], clicks: bool) -> tuple[bool, bool] | None:
        """Fix the first error of `pred` (a new constraint), or finish; returns whether the
        last click was completed to its gold span exactly (None when there was none)."""
        checked = None
        if self.click is not None:
            at = self.click[0]
            completed = next((p for p in pred if p[0] <= at < p[1]), None)
            checked, self.click = (completed == self.click, True), None
        error = first_error(pred, self.gold)
        if error is None:
            self.done = True
            return checked
        start, p, g = error
        self.fixes.append(("read", start))
        self.actions += cost(p, g)
        if g is None:
            self.fixes.append(("outside", p[:2]))
        elif p is None and clicks:
            self.fixes.append(("click", (g[0], g[2])))
            self.click = g
        else:
            self.fixes.append(("entity", g))
        if p is not None and g is not None:  # tokens the moved boundary leaves: no entity
            in_gold = {t for start, end, _ in self.gold for t in range(start, end)}
            self.fixes += [("outside", (t, t + 1)) for t in range(*p[:2]) if t not in in_gold]
        return checked

    def read_up_to(self) -> int:
        return max((value for kind, value in self.fixes if kind == "read"), default=0)


def tagger_runner(nlp: Language) -> Callable:
    """Decode sentences under their sessions' fixes with the tagger's CRF (emissions once)."""
    pipe = nlp.get_pipe("ner")
    labels, scheme = list(pipe.labels), pipe.cfg["scheme"]
    cache: dict[int, numpy.ndarray] = {}

    def decode(docs: list[Doc], sessions: list[Session], indices: list[int]) -> list[set[Ent]]:
        missing = [i for i in indices if i not in cache]
        if missing:
            for i, scores in zip(missing, pipe.model.predict([docs[i] for i in missing])):
                cache[i] = scores
        sets = []
        for i in indices:
            allowed = TagSets(labels, len(docs[i]), scheme)
            session = sessions[i]
            read = session.read_up_to()
            inside_read = [g for g in session.gold if g[1] <= read]
            covered = numpy.zeros(len(docs[i]), dtype=bool)
            for start, end, label in inside_read:
                allowed.entity(start, end, label)
                covered[start:end] = True
            for t in numpy.flatnonzero(~covered[:read]):
                allowed.outside(int(t), int(t) + 1)
            for kind, value in session.fixes:
                if kind == "entity":
                    allowed.entity(*value)
                elif kind == "outside":
                    allowed.outside(*value)
                elif kind == "click":
                    allowed.inside(value[0], [value[1]])
            sets.append(allowed.allowed)
        paths, _ = crf_ops.tagger_decode(pipe.model, [cache[i] for i in indices], sets)
        out = []
        for path in paths:
            found = read_entities(path, scheme)
            out.append({(int(s), int(e), labels[lab]) for s, e, lab in zip(*found)})
        return out

    return decode


def ner_runner(nlp: Language) -> Callable:
    """Decode sentences with spaCy's ner, fixes as preset entities and blocked tokens."""
    pipe = nlp.get_pipe("ner")

    def decode(docs: list[Doc], sessions: list[Session], indices: list[int]) -> list[set[Ent]]:
        batch = []
        for i in indices:
            doc = Doc(
                nlp.vocab,
                words=[t.text for t in docs[i]],
                spaces=[bool(t.whitespace_) for t in docs[i]],
            )
            session = sessions[i]
            read = session.read_up_to()
            fixed = {g for g in session.gold if g[1] <= read}
            fixed |= {value for kind, value in session.fixes if kind == "entity"}
            taken = numpy.zeros(len(doc), dtype=bool)
            for start, end, _ in fixed:
                taken[start:end] = True
            blocked = set(numpy.flatnonzero(~taken[:read]).tolist())
            for kind, value in session.fixes:
                if kind == "outside":
                    blocked |= set(range(*value))
            doc.set_ents(
                [Span(doc, s, e, label=label) for s, e, label in sorted(fixed)],
                blocked=[doc[t : t + 1] for t in sorted(blocked)],
                default="missing",
            )
            batch.append(doc)
        return [
            {(e.start, e.end, e.label_) for e in doc.ents}
            for doc in pipe.pipe(batch, batch_size=256)
        ]

    return decode


def simulate(decode: Callable, docs: list[Doc], golds: list[set[Ent]], clicks: bool) -> dict:
    """Every sentence corrected with propagation, in rounds of one action per sentence."""
    sessions = [Session(gold, len(doc)) for doc, gold in zip(docs, golds)]
    active = [i for i, doc in enumerate(docs) if len(doc)]
    first = None
    exact = tried = 0
    while active:
        found = decode(docs, sessions, active)
        if first is None:
            first = dict(zip(active, found))
        for i, pred in zip(active, found):
            checked = sessions[i].act(pred, clicks)
            if checked is not None:
                exact += checked[0]
                tried += 1
        active = [i for i in active if not sessions[i].done]
    return {
        "actions": sum(s.actions for s in sessions),
        "first": first or {},
        "clicks": tried,
        "exact": exact,
    }


def sentences(path: Path, nlp: Language) -> tuple[list[Doc], list[set[Ent]]]:
    """The test set's sentences as `nlp` tokenizes their texts, and their gold entities on
    those tokens (every token an entity's characters touch)."""
    docs, golds = [], []
    for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
        for sent in doc.sents if doc.has_annotation("SENT_START") else [doc[:]]:
            part = sent.as_doc()
            tokens = nlp.make_doc(part.text)
            spans = [
                (tokens.char_span(e.start_char, e.end_char, alignment_mode="expand"), e.label_)
                for e in part.ents
            ]
            docs.append(tokens)
            golds.append({(span.start, span.end, label) for span, label in spans})
    return docs, golds


def f1(first: dict[int, set[Ent]], golds: list[set[Ent]]) -> float:
    pred = {(i, *e) for i, ents in first.items() for e in ents}
    gold = {(i, *e) for i, ents in enumerate(golds) for e in ents}
    hits = len(pred & gold)
    return 200 * hits / (len(pred) + len(gold)) if pred or gold else 0.0


def named(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tagger", type=named, action="append", default=[])
    parser.add_argument("--ner", type=named, action="append", default=[])
    parser.add_argument("--limit", type=int, default=0, help="first N sentences only (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        "# Correction propagation",
        "",
        f"Command: python {' '.join(sys.argv)}",
        f"Date: {datetime.date.today()}; CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; "
        f"Python {platform.python_version()}",
        "",
        "| tagger | sentences | entities | F1 | actions / 100 sentences | propagated | saved "
        "| with clicks | clicks exact | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    runs = [(name, path, tagger_runner) for name, path in args.tagger]
    runs += [(name, path, ner_runner) for name, path in args.ner]
    for name, path, runner in runs:
        nlp = spacy.load(path)
        if runner is tagger_runner:
            nlp.get_pipe("ner").cfg["threads"] = 1
        docs, golds = sentences(args.test, nlp)
        if args.limit:
            docs, golds = docs[: args.limit], golds[: args.limit]
        begin = time.perf_counter()
        decode = runner(nlp)
        propagated = simulate(decode, docs, golds, clicks=False)
        first = propagated["first"]
        without = sum(static_actions(first.get(i, set()), gold) for i, gold in enumerate(golds))
        clicked = simulate(decode, docs, golds, clicks=True) if runner is tagger_runner else None
        seconds = time.perf_counter() - begin
        per = 100 / len(docs)
        saved = 1 - propagated["actions"] / without if without else 0.0
        click_cells = "n/a | n/a"
        if clicked is not None:
            rate = clicked["exact"] / clicked["clicks"] if clicked["clicks"] else 0.0
            click_cells = f"{clicked['actions'] * per:.2f} | {rate:.1%} of {clicked['clicks']:,}"
        lines.append(
            f"| {name} | {len(docs):,} | {sum(map(len, golds)):,} | {f1(first, golds):.2f} | "
            f"{without * per:.2f} | {propagated['actions'] * per:.2f} | {saved:.1%} | "
            f"{click_cells} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
