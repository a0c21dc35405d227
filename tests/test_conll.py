"""Tests for spacy_bilstm_crf.train.conll: CoNLL NER reading, grouping and DocBin conversion."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from spacy_bilstm_crf.train.conll import (
    ConllFormatError,
    Sentence,
    Stats,
    conll_to_docs,
    convert,
    detect_scheme,
    doc_starts_path,
    read_conll,
    read_doc_starts,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

IOB1 = """\
John I-PER
Smith I-PER
met O
Mary B-PER
in O
Paris I-LOC
Berlin B-LOC
. O

Acme I-ORG
Corp I-ORG
Germany I-LOC
"""

IOB2 = """\
John B-PER
Smith I-PER
met O
Mary B-PER
in O
Paris B-LOC
Berlin B-LOC
. O

Acme B-ORG
Corp I-ORG
Germany B-LOC
"""


def write(tmp_path: Path, text: str, name: str = "data.conll") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sentences_text(n: int, docstart_every: int = 0) -> str:
    """n one-token-per-word sentences 'sN w O', optionally with -DOCSTART- blocks."""
    blocks = []
    for i in range(n):
        if docstart_every and i % docstart_every == 0:
            blocks.append("-DOCSTART- -X- O O\n")
        blocks.append(f"s{i} NN O\nword NN O\n")
    return "\n".join(blocks)


def ents(doc) -> list[tuple[str, int, int]]:
    return [(ent.label_, ent.start, ent.end) for ent in doc.ents]


def sents(doc) -> list[str]:
    return [sent.text for sent in doc.sents]


def test_iob1_and_iob2_give_same_entities(tmp_path: Path) -> None:
    iob1 = write(tmp_path, IOB1, "iob1.conll")
    iob2 = write(tmp_path, IOB2, "iob2.conll")
    assert detect_scheme(iob1) == "iob1"
    assert detect_scheme(iob2) == "iob2"
    assert read_conll(iob1) == read_conll(iob2) == read_conll(iob1, scheme="iob1")
    assert read_conll(iob2, scheme="iob2") == read_conll(iob2)
    (doc1,) = conll_to_docs(Vocab(), iob1)
    (doc2,) = conll_to_docs(Vocab(), iob2)
    expected = [("PER", 0, 2), ("PER", 3, 4), ("LOC", 5, 6), ("LOC", 6, 7)]
    expected += [("ORG", 8, 10), ("LOC", 10, 11)]
    assert ents(doc1) == ents(doc2) == expected


def test_iob1_entities_do_not_cross_sentences(tmp_path: Path) -> None:
    path = write(tmp_path, "New I-LOC\nYork I-LOC\n\nBoston I-LOC\n")
    assert [s.tags for s in read_conll(path)] == [("B-LOC", "I-LOC"), ("B-LOC",)]
    (doc,) = conll_to_docs(Vocab(), path)
    assert ents(doc) == [("LOC", 0, 2), ("LOC", 2, 3)]


def test_scheme_iob2_rejects_iob1_tags(tmp_path: Path) -> None:
    path = write(tmp_path, IOB1)
    with pytest.raises(ConllFormatError, match=r"data\.conll, line 1: .*'I-PER'") as info:
        read_conll(path, scheme="iob2")
    assert info.value.line == 1
    path = write(tmp_path, "a O\nb I-PER\n")
    with pytest.raises(ConllFormatError, match=r"line 2\b"):
        read_conll(path, scheme="iob2")


def test_unknown_scheme_and_bad_n_sents(tmp_path: Path) -> None:
    path = write(tmp_path, IOB2)
    with pytest.raises(ValueError, match="scheme"):
        read_conll(path, scheme="bioes")
    with pytest.raises(ValueError, match="n_sents"):
        conll_to_docs(Vocab(), path, n_sents=0)


def test_tab_and_space_separators(tmp_path: Path) -> None:
    spaces = read_conll(write(tmp_path, IOB2, "spaces.conll"))
    tabs = read_conll(write(tmp_path, IOB2.replace(" ", "\t"), "tabs.conll"))
    mixed_text = IOB2.replace(" B-", " \t B-").replace("\n", "  \r\n")
    mixed = read_conll(write(tmp_path, mixed_text, "mixed.conll"))
    assert spaces == tabs == mixed
    assert spaces[0].words[:2] == ("John", "Smith")


def test_extra_columns_are_ignored(tmp_path: Path) -> None:
    text = "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n"
    (sentence,) = read_conll(write(tmp_path, text))
    assert sentence == Sentence(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC"), 1)


def test_whitespace_only_lines_break_sentences(tmp_path: Path) -> None:
    path = write(tmp_path, "a O\n\t\nb O\n   \nc O\n\n\n\nd O")
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [("a",), ("b",), ("c",), ("d",)]
    assert [s.line for s in sentences] == [1, 3, 5, 9]


def test_docstart_grouping(tmp_path: Path) -> None:
    path = write(tmp_path, sentences_text(7, docstart_every=3))
    sentences = read_conll(path)
    assert len(sentences) == 7
    assert [s.doc_start for s in sentences] == [True, False, False, True, False, False, True]
    docs = conll_to_docs(Vocab(), path, n_sents=2)
    assert [len(list(doc.sents)) for doc in docs] == [3, 3, 1]
    assert not any(token.text == "-DOCSTART-" for doc in docs for token in doc)


def test_docstart_without_blank_line_and_at_end(tmp_path: Path) -> None:
    text = "a O\nb O\n\nc O\n-DOCSTART- -X- O O\nd O\n\ne O\n\n-DOCSTART-\n\n"
    docs = conll_to_docs(Vocab(), write(tmp_path, text))
    assert [sents(doc) for doc in docs] == [["a b", "c"], ["d", "e"]]


def test_doc_starts_file_grouping(tmp_path: Path) -> None:
    path = write(tmp_path, sentences_text(6, docstart_every=2), "train.conll")
    side_file = tmp_path / "train.doc_starts.txt"
    assert doc_starts_path(path) == side_file
    side_file.write_text("0\n1\n4\n", encoding="utf-8")
    assert read_doc_starts(side_file) == [0, 1, 4]
    docs = conll_to_docs(Vocab(), path, n_sents=5)
    assert [len(list(doc.sents)) for doc in docs] == [1, 3, 2]
    assert docs[1][0].text == "s1"


def test_n_sents_grouping(tmp_path: Path) -> None:
    path = write(tmp_path, sentences_text(25))
    assert [len(list(doc.sents)) for doc in conll_to_docs(Vocab(), path)] == [10, 10, 5]
    assert [len(doc) for doc in conll_to_docs(Vocab(), path, n_sents=12)] == [24, 24, 2]


def test_limit_keeps_first_sentences_and_cuts_last_doc(tmp_path: Path) -> None:
    path = write(tmp_path, sentences_text(9, docstart_every=4))
    docs = conll_to_docs(Vocab(), path, limit=6)
    assert [sents(doc) for doc in docs] == [
        ["s0 word", "s1 word", "s2 word", "s3 word"],
        ["s4 word", "s5 word"],
    ]
    assert len(conll_to_docs(Vocab(), path, limit=100)) == 3
    (tmp_path / "data.doc_starts.txt").write_text("0\n2\n7\n", encoding="utf-8")
    assert [len(doc) for doc in conll_to_docs(Vocab(), path, limit=7)] == [4, 10]
    with pytest.raises(ValueError, match="limit"):
        conll_to_docs(Vocab(), path, limit=0)


def test_limit_still_checks_the_whole_file(tmp_path: Path) -> None:
    path = write(tmp_path, sentences_text(3) + "\nbad X-PER\n", "bad.conll")
    with pytest.raises(ConllFormatError, match=r"bad\.conll, line 10"):
        conll_to_docs(Vocab(), path, limit=1)


def test_sentence_boundaries_preserved(tmp_path: Path) -> None:
    (doc,) = conll_to_docs(Vocab(), write(tmp_path, IOB2))
    assert sents(doc) == ["John Smith met Mary in Paris Berlin .", "Acme Corp Germany"]
    assert [token.is_sent_start for token in doc] == [True] + [False] * 7 + [True, False, False]


def test_empty_file_gives_no_docs(tmp_path: Path) -> None:
    path = write(tmp_path, "\n\n")
    assert read_conll(path) == []
    assert conll_to_docs(Vocab(), path) == []


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a O\nb\n", 2, "one column"),
        ("a O\n\nb X-PER\n", 3, "'X-PER'"),
        ("a B-\n", 1, "'B-'"),
        ("a O\nb I-\n", 2, "'I-'"),
        ("a S-PER\n", 1, "'S-PER'"),
        ("a o\n", 1, "'o'"),
        ("a O-PER\n", 1, "'O-PER'"),
    ],
)
def test_malformed_lines_raise(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, text, "bad.conll")
    with pytest.raises(ConllFormatError, match=rf"bad\.conll, line {line}: .*{reason}") as info:
        read_conll(path)
    assert isinstance(info.value, ValueError)
    assert (info.value.path, info.value.line) == (str(path), line)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("0\n2\n1\n", 3, "not greater"),
        ("0\n0\n", 2, "not greater"),
        ("1\n2\n", 1, "must start at 0"),
        ("0\n\n3\n", 3, "out of range"),
        ("0\nx\n", 2, "sentence index"),
        ("", 1, "no document starts"),
    ],
)
def test_malformed_doc_starts_raise(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = write(tmp_path, sentences_text(3), "split.conll")
    (tmp_path / "split.doc_starts.txt").write_text(text, encoding="utf-8")
    pattern = rf"split\.doc_starts\.txt, line {line}: .*{reason}"
    with pytest.raises(ConllFormatError, match=pattern):
        conll_to_docs(Vocab(), path)


def test_non_utf8_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conll"
    path.write_bytes("a O\nb O\n\nM\u00fcller B-PER\n".encode("latin-1"))
    with pytest.raises(ConllFormatError, match=r"latin1\.conll, line 4: not valid UTF-8"):
        read_conll(path)


def test_utf8_bom_and_unicode_tokens(tmp_path: Path) -> None:
    path = tmp_path / "bom.conll"
    path.write_bytes("\ufeffM\u00fcller B-PER\nwatched\u200bwas O\nx\u00a0y O\n".encode())
    (sentence,) = read_conll(path)
    assert sentence.words == ("M\u00fcller", "watched\u200bwas", "x\u00a0y")


def test_docbin_round_trip(tmp_path: Path) -> None:
    source = write(tmp_path, IOB1 + "\n" + sentences_text(12))
    output = tmp_path / "out" / "data.spacy"
    stats = convert(source, output, n_sents=5)
    expected_docs = conll_to_docs(Vocab(), source, n_sents=5)
    loaded = list(DocBin().from_disk(output).get_docs(Vocab()))
    assert [doc.text for doc in loaded] == [doc.text for doc in expected_docs]
    assert [ents(doc) for doc in loaded] == [ents(doc) for doc in expected_docs]
    assert [sents(doc) for doc in loaded] == [sents(doc) for doc in expected_docs]
    assert stats == Stats.from_docs(loaded)
    assert stats == Stats(14, 3, 35, {"PER": 2, "LOC": 3, "ORG": 1})


def test_stats_table_and_sum() -> None:
    total = Stats(2, 1, 10, {"PER": 1}) + Stats(3, 1, 5, {"PER": 2, "LOC": 1})
    assert total == Stats(5, 2, 15, {"PER": 3, "LOC": 1})
    table = str(Stats(14041, 946, 203621, {"PER": 6600, "LOC": 7140}))
    assert table.splitlines()[0].split() == ["sentences", "14,041"]
    assert ["entities", "13,740"] in [row.split() for row in table.splitlines()]


@given(
    st.lists(
        st.lists(
            st.tuples(
                st.text(alphabet="abcXYZ\u00e9\u00a0.-", min_size=1, max_size=5),
                st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-creative-work"]),
            ),
            min_size=1,
            max_size=6,
        ),
        max_size=5,
    ),
    st.sampled_from([" ", "\t", " \t "]),
)
@settings(max_examples=40, deadline=None)
def test_written_sentences_read_back(tmp_path_factory, sentences, sep) -> None:
    text = "\n".join("".join(f"{w}{sep}{t}\n" for w, t in sent) for sent in sentences)
    path = write(tmp_path_factory.mktemp("prop"), text)
    read = read_conll(path)
    assert [s.words for s in read] == [tuple(w for w, _ in sent) for sent in sentences]
    for sentence, written in zip(read, sentences):
        previous = ["O"] + [tag for _, tag in written]
        starts = [starts_entity(prev, tag) for prev, (_, tag) in zip(previous, written)]
        assert [tag.startswith("B-") for tag in sentence.tags] == starts
        assert [tag[2:] for tag in sentence.tags] == [tag[2:] for _, tag in written]


def starts_entity(previous: str, tag: str) -> bool:
    """IOB1 reading: B-X always starts an entity, I-X does unless it continues type X."""
    return tag.startswith("B-") or (tag.startswith("I-") and previous[2:] != tag[2:])


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "spacy_bilstm_crf.train.conll", *map(str, args)]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_cli_converts_file_and_directory(tmp_path: Path) -> None:
    write(tmp_path, IOB1, "a.conll")
    write(tmp_path, sentences_text(11), "b.conll")
    result = run_cli(tmp_path, tmp_path / "out", "--n-sents", "4")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["sentences", "2"] in rows and ["documents", "1"] in rows and ["ORG", "1"] in rows
    assert ["sentences", "11"] in rows and ["documents", "3"] in rows and ["tokens", "22"] in rows
    assert ["entities", "6"] in rows
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.spacy", "b.spacy"]


def test_cli_limit(tmp_path: Path) -> None:
    write(tmp_path, sentences_text(30), "a.conll")
    write(tmp_path, IOB2, "b.conll")
    result = run_cli(tmp_path, tmp_path / "out", "--limit", "12", "--n-sents", "5")
    assert result.returncode == 0, result.stderr
    docs = list(DocBin().from_disk(tmp_path / "out" / "a.spacy").get_docs(Vocab()))
    assert [len(list(doc.sents)) for doc in docs] == [5, 5, 2]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["sentences", "12"] in rows and ["sentences", "2"] in rows
    result = run_cli(tmp_path / "a.conll", tmp_path / "a.spacy", "--limit", "0")
    assert result.returncode == 0 and ["sentences", "30"] in [
        line.split() for line in result.stdout.splitlines()
    ]
    result = run_cli(tmp_path / "a.conll", tmp_path / "a.spacy", "--limit", "-1")
    assert result.returncode == 1 and "limit must be at least 1, got -1" in result.stderr


def test_cli_reports_malformed_input_without_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, "a O\nb X-PER\n", "bad.conll")
    result = run_cli(bad, tmp_path / "bad.spacy", "--scheme", "iob2")
    assert result.returncode == 1
    assert "bad.conll, line 2" in result.stderr and "'X-PER'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad.spacy").exists()


CONLL2003 = {
    "train": (14041, 946, 203621, {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}),
    "dev": (3250, 216, 51362, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}),
    "test": (3453, 231, 46435, {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}),
}
WNUT_TYPES = ("person", "location", "group", "corporation", "product", "creative-work")
WNUT17 = {
    "train": (3394, 62730, (660, 548, 264, 221, 142, 140)),
    "dev": (1009, 15733, (470, 74, 39, 34, 114, 105)),
    "test": (1287, 23394, (429, 150, 165, 66, 127, 142)),
}


def data_file(corpus: str, split: str) -> Path:
    path = DATA / corpus / f"{split}.conll"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def token_lines(path: Path) -> int:
    lines = path.read_text(encoding="utf-8").split("\n")
    return sum(1 for line in lines if line.strip() and not line.startswith("-DOCSTART-"))


@pytest.mark.parametrize("split", sorted(CONLL2003))
def test_conll2003_counts(split: str) -> None:
    path = data_file("conll2003", split)
    sentences, n_docs, tokens, entities = CONLL2003[split]
    stats = Stats.from_docs(conll_to_docs(Vocab(), path))
    assert stats == Stats(sentences, n_docs, tokens, entities)
    assert stats.total_entities == sum(entities.values())
    assert token_lines(path) == tokens
    assert len(read_doc_starts(doc_starts_path(path))) == n_docs


@pytest.mark.parametrize("split", sorted(WNUT17))
def test_wnut17_counts(split: str) -> None:
    path = data_file("wnut17", split)
    sentences, tokens, entity_counts = WNUT17[split]
    stats = Stats.from_docs(conll_to_docs(Vocab(), path))
    expected_docs = -(-sentences // 10)
    assert stats == Stats(sentences, expected_docs, tokens, dict(zip(WNUT_TYPES, entity_counts)))
    assert token_lines(path) == tokens
    assert detect_scheme(path) == "iob2"
