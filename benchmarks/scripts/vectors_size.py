"""What a smaller static-vectors table costs a trained pipeline: test F1 against saved size.

    python benchmarks/scripts/vectors_size.py MODEL corpus/conll2003/test.spacy \\
        --rows 0 100000 50000 20000 --output metrics/vectors_size.md

For each row count (0: the whole table) and each storage type (float32, float16), the
pipeline's table is cut to its first ROWS rows (GloVe's rows are ordered by word frequency;
every key of a kept row stays, so a Title or UPPER key still finds its row), the pipeline is
scored on DATA with `nlp.evaluate`, and what `Vectors.to_disk` writes (the table, its key
index and the vocab's strings, which the cut leaves as they are) is measured. The model is
not retrained: the cut is what a user gets by pruning a trained pipeline's table, words of a
dropped row reading zeros. The component reads any float table as float32, so float16
storage halves the table with no code change.
"""

import argparse
import platform
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy
import spacy
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.vectors import Vectors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from seed_runs import write_lines  # noqa: E402
from speed import cpu_model  # noqa: E402


def cut_table(vectors: Vectors, rows: int, dtype: str) -> Vectors:
    """The first `rows` rows of `vectors` (all for 0) as `dtype`, with every key that maps
    into them."""
    rows = rows or vectors.shape[0]
    data = numpy.asarray(vectors.data)[:rows].astype(dtype)
    table = Vectors(strings=vectors.strings, data=data)
    for key, row in vectors.key2row.items():
        if row < rows:
            table.add(key, row=row)
    return table


def saved_megabytes(vectors: Vectors) -> float:
    """Size of the table's files as `nlp.to_disk` writes them."""
    with tempfile.TemporaryDirectory() as folder:
        vectors.to_disk(folder)
        return sum(path.stat().st_size for path in Path(folder).iterdir()) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="trained pipeline with a vectors table")
    parser.add_argument("data", type=Path, help=".spacy file to score on")
    parser.add_argument("--rows", type=int, nargs="+", default=[0, 100_000, 50_000, 20_000])
    parser.add_argument("--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    nlp = spacy.load(args.model)
    full = nlp.vocab.vectors
    if not full.shape[0]:
        parser.error(f"{args.model} has no vectors table")
    docs = list(DocBin().from_disk(args.data).get_docs(nlp.vocab))
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs]
    lines = [
        f"## Vectors table size against test F1: `{args.model}` on `{args.data}`",
        "",
        f"{cpu_model()} ({platform.machine()}), {datetime.now(timezone.utc).date()}; "
        f"the table has {full.shape[0]:,} rows of {full.shape[1]} and {len(full.key2row):,} "
        "keys. Rows cut after training, not retrained.",
        "",
        "| rows | stored as | keys | table on disk | test F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rows in args.rows:
        for dtype in ("float32", "float16"):
            table = cut_table(full, rows, dtype)
            nlp.vocab.vectors = table
            f = nlp.evaluate(examples)["ents_f"]
            lines.append(
                f"| {table.shape[0]:,} | {dtype} | {len(table.key2row):,} "
                f"| {saved_megabytes(table):.1f} MB | {100 * f:.2f} |"
            )
            print(lines[-1], flush=True)
    nlp.vocab.vectors = full
    write_lines(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
