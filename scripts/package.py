"""Build an installable pipeline package and the plugin's wheel side by side.

    python scripts/package.py MODEL packages --name bilstm_crf_mydata --version 0.0.0
        [--scores metrics/mydata/bilstm_crf.json --corpus corpus/mydata]

`spacy package` writes the package folder `packages/{lang}_{name}-{version}`; then pip builds
the pipeline's wheel and the wheel of this plugin (from the clone the project runs in) into
its `dist/` folder. The pipeline's wheel requires `spacy-bilstm-crf`, which no index holds yet:
with both wheels in one folder, `pip install dist/*.whl` installs the pipeline anywhere with
torch and access to the registry (spaCy and the rest), and `spacy.load(name)` works. The
plugin is not copied into the pipeline (`spacy package --code`): its factory is found through
its entry points, which only an installed plugin has, and several pipelines share one copy.

Quiet unless something fails: the tools' output is shown only then. With the scores and the
corpus, the test F1 is printed with what puts it in context: how much the model was trained
on, and what a lookup of the training entities alone scores on the same test set.
"""

import argparse
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import spacy
import srsly
from spacy.scorer import Scorer
from spacy.tokens import DocBin
from spacy.training import Example

ROOT = Path(__file__).resolve().parents[1]


def quiet(command: Sequence[str], what: str) -> None:
    """Run `command`; on failure print its output and stop with its exit status."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        print(f"package: {what} failed (exit status {result.returncode})", file=sys.stderr)
        raise SystemExit(result.returncode)


def build(model: Path, packages: Path, name: str, version: str) -> tuple[Path, Path, Path]:
    """The package folder, the pipeline's wheel and the plugin's wheel."""
    lang = srsly.read_json(model / "meta.json")["lang"]
    folder = packages / f"{lang}_{name}-{version}"
    dist = folder / "dist"
    spacy_package = [sys.executable, "-m", "spacy", "package", str(model), str(packages)]
    spacy_package += ["--name", name, "--version", version, "--build", "none", "--force"]
    quiet(spacy_package, "spacy package")
    for old in dist.glob("*.whl"):
        old.unlink()
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir"]
    quiet([*wheel, str(dist), str(folder)], "the pipeline's wheel")
    quiet([*wheel, str(dist), str(ROOT)], "the plugin's wheel")
    pipeline = next(dist.glob(f"{lang}_{name}-{version}-*.whl"))
    plugin = next(dist.glob("spacy_bilstm_crf-*.whl"))
    return folder, pipeline, plugin


def lookup_f1(corpus: Path, lang: str) -> tuple[float, int, int]:
    """F1 on `corpus/test.spacy` of an entity ruler that gives every entity text of
    `corpus/train.spacy` its most frequent label (what memorising the training entities
    alone scores), with the training sentences and entities counted."""
    nlp = spacy.blank(lang)
    train = list(DocBin().from_disk(corpus / "train.spacy").get_docs(nlp.vocab))
    labels: dict[str, Counter] = {}
    for doc in train:
        for ent in doc.ents:
            labels.setdefault(ent.text, Counter())[ent.label_] += 1
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [{"label": found.most_common(1)[0][0], "pattern": text} for text, found in labels.items()]
    )
    test = DocBin().from_disk(corpus / "test.spacy").get_docs(nlp.vocab)
    examples = [Example(nlp(doc.text), doc) for doc in test]
    sentences = sum(
        1 for doc in train for _ in (doc.sents if doc.has_annotation("SENT_START") else [doc])
    )
    entities = sum(len(doc.ents) for doc in train)
    return Scorer.score_spans(examples, "ents")["ents_f"] or 0.0, sentences, entities


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the trained pipeline folder")
    parser.add_argument("packages", type=Path, help="the folder for package folders")
    parser.add_argument("--name", required=True, help="the package name, without the language")
    parser.add_argument("--version", default="0.0.0")
    parser.add_argument("--scores", type=Path, help="the test scores to report (JSON)")
    parser.add_argument("--corpus", type=Path, help="its train.spacy and test.spacy, for context")
    args = parser.parse_args(argv)
    if not (args.model / "meta.json").is_file():
        parser.error(f"{args.model} is not a trained pipeline folder (it has no meta.json)")
    folder, pipeline, plugin = build(args.model, args.packages, args.name, args.version)
    if args.scores is not None and args.scores.is_file():
        scores = srsly.read_json(args.scores)
        f1 = scores.get("ents_f")
        if f1 is not None and args.corpus is not None:
            lang = srsly.read_json(args.model / "meta.json")["lang"]
            lookup, sentences, entities = lookup_f1(args.corpus, lang)
            print(
                f"Test F1: {100 * f1:.2f} ({args.scores}), trained on {sentences:,} sentences "
                f"with {entities:,} entities; a lookup of those entities scores "
                f"{100 * lookup:.2f}; the full data's F1: README.md, Results"
            )
        elif f1 is not None:
            print(f"Test F1: {100 * f1:.2f} ({args.scores})")
    print(f"Trained pipeline: {args.model}")
    print(f"Package: {pipeline}")
    print(f"         with the plugin it needs, {plugin.name}")
    print("Install it anywhere (Python with pip install torch==2.13.0 done first):")
    print(f"  pip install {folder / 'dist'}/*.whl")
    print(f'then: spacy.load("{pipeline.name.split("-")[0]}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
