"""Read CoNLL-style NER files and convert them to spaCy Docs and `.spacy` DocBins.

Input format: one token per line, the token in the first column and the NER tag in
the last one (columns separated by tabs or spaces, middle columns are ignored), a
blank or whitespace-only line between sentences, optional `-DOCSTART-` lines.
Tags are IOB1 or IOB2 and are always returned as IOB2.

Run `python -m spacy_bilstm_crf convert INPUT OUTPUT [--n-sents 10] [--scheme auto] [--limit N]`
(`--limit 0`, the default, converts every sentence).
"""

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spacy.tokens import Doc, DocBin
from spacy.training.iob_utils import biluo_to_iob, iob_to_biluo
from spacy.vocab import Vocab

PathLike = str | Path

SCHEMES = ("auto", "iob1", "iob2")
DOCSTART = "-DOCSTART-"
DOC_STARTS_SUFFIX = ".doc_starts.txt"
_TAG_RE = re.compile(r"O|[BI]-\S+")
_COLUMN_SEP = re.compile(r"[ \t]+")
_BOM = b"\xef\xbb\xbf"


class ConllFormatError(ValueError):
    """Malformed input; the message names the file and the 1-based line number."""

    def __init__(self, path: PathLike, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{path}, line {line}: {reason}")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words, IOB2 tags, the 1-based line of its first token, and
    whether a `-DOCSTART-` marker came right before it."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int
    doc_start: bool = False


@dataclass
class Stats:
    """Counts of sentences, documents, tokens and entities per type."""

    sentences: int = 0
    docs: int = 0
    tokens: int = 0
    entities: dict[str, int] = field(default_factory=dict)

    @property
    def total_entities(self) -> int:
        """Number of entities of all types."""
        return sum(self.entities.values())

    @classmethod
    def from_docs(cls, docs: Sequence[Doc]) -> "Stats":
        """Count what the Docs actually contain (sentences via `doc.sents`)."""
        stats = cls(docs=len(docs))
        for doc in docs:
            stats.sentences += sum(1 for _ in doc.sents)
            stats.tokens += len(doc)
            for ent in doc.ents:
                stats.entities[ent.label_] = stats.entities.get(ent.label_, 0) + 1
        return stats

    def __add__(self, other: "Stats") -> "Stats":
        entities = dict(self.entities)
        for label, count in other.entities.items():
            entities[label] = entities.get(label, 0) + count
        return Stats(
            self.sentences + other.sentences,
            self.docs + other.docs,
            self.tokens + other.tokens,
            entities,
        )

    def rows(self) -> list[tuple[str, int]]:
        """The table rows as (name, count) pairs."""
        rows = [("sentences", self.sentences), ("documents", self.docs), ("tokens", self.tokens)]
        rows.extend((f"  {label}", self.entities[label]) for label in sorted(self.entities))
        rows.append(("entities", self.total_entities))
        return rows

    def __str__(self) -> str:
        width = max(len(name) for name, _ in self.rows())
        return "\n".join(f"{name:<{width}}  {count:>9,}" for name, count in self.rows())


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) with a per-line UTF-8 check."""
    data = path.read_bytes()
    data = data.removeprefix(_BOM)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            yield number, raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            bad = raw[err.start : err.start + 1].hex()
            reason = f"not valid UTF-8 (byte 0x{bad} at column {err.start + 1})"
            raise ConllFormatError(path, number, reason) from None


def to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert one sentence's IOB1 or IOB2 tags to IOB2 (via spaCy's BILUO helpers)."""
    return biluo_to_iob(iob_to_biluo(tags))


def _parse_line(path: Path, number: int, text: str) -> tuple[str, str]:
    columns = _COLUMN_SEP.split(text.strip(" \t"))
    if len(columns) < 2:
        raise ConllFormatError(path, number, f"expected 'TOKEN ... TAG', got one column {text!r}")
    tag = columns[-1]
    if not _TAG_RE.fullmatch(tag):
        raise ConllFormatError(path, number, f"invalid tag {tag!r} (expected O, B-TYPE or I-TYPE)")
    return columns[0], tag


def _raw_sentences(path: Path) -> Iterator[Sentence]:
    """Yield sentences with the tags as written in the file."""
    words: list[str] = []
    tags: list[str] = []
    start_line = 0
    doc_start = False
    for number, text in _decoded_lines(path):
        is_docstart = _COLUMN_SEP.split(text.strip(" \t"))[0] == DOCSTART
        if words and (is_docstart or not text.strip()):
            yield Sentence(tuple(words), tuple(tags), start_line, doc_start)
            words, tags, doc_start = [], [], False
        if is_docstart:
            doc_start = True
        elif text.strip():
            word, tag = _parse_line(path, number, text)
            start_line = start_line if words else number
            words.append(word)
            tags.append(tag)
    if words:
        yield Sentence(tuple(words), tuple(tags), start_line, doc_start)


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def _convert_sentence(path: Path, sentence: Sentence, scheme: str) -> Sentence:
    iob2 = tuple(to_iob2(sentence.tags))
    if scheme == "iob2" and iob2 != sentence.tags:
        i = next(i for i, (a, b) in enumerate(zip(iob2, sentence.tags)) if a != b)
        reason = f"tag {sentence.tags[i]!r} starts an entity, invalid in IOB2 (use scheme 'iob1')"
        raise ConllFormatError(path, sentence.line + i, reason)
    return Sentence(sentence.words, iob2, sentence.line, sentence.doc_start)


def read_conll(path: PathLike, scheme: str = "auto") -> list[Sentence]:
    """Read a CoNLL NER file into sentences with IOB2 tags.

    scheme: "auto" and "iob1" accept both IOB1 and IOB2 input (the two agree on valid
    IOB2); "iob2" rejects an `I-X` that starts an entity.
    """
    _check_scheme(scheme)
    path = Path(path)
    return [_convert_sentence(path, sent, scheme) for sent in _raw_sentences(path)]


def detect_scheme(path: PathLike) -> str:
    """Return "iob1" if some `I-X` tag in the file starts an entity, else "iob2"."""
    for sentence in _raw_sentences(Path(path)):
        if tuple(to_iob2(sentence.tags)) != sentence.tags:
            return "iob1"
    return "iob2"


def doc_starts_path(conll_path: PathLike) -> Path:
    """The side file `<stem>.doc_starts.txt` next to `<stem>.conll`."""
    conll_path = Path(conll_path)
    return conll_path.with_name(conll_path.stem + DOC_STARTS_SUFFIX)


def _parse_doc_start(path: Path, number: int, text: str, previous: int | None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConllFormatError(path, number, f"expected a sentence index, got {text!r}") from None
    if previous is None and value != 0:
        raise ConllFormatError(path, number, f"the first document must start at 0, not {value}")
    if previous is not None and value <= previous:
        raise ConllFormatError(path, number, f"{value} is not greater than {previous}")
    return value


def read_doc_starts(path: PathLike, n_sentences: int | None = None) -> list[int]:
    """Read the 0-based index of each document's first sentence, one per line.

    The indices must start at 0 and increase; with `n_sentences` they must also be
    smaller than it (and the file non-empty when there are sentences).
    """
    path = Path(path)
    starts: list[int] = []
    last_line = 1
    for number, text in _decoded_lines(path):
        if not text.strip():
            continue
        value = _parse_doc_start(path, number, text, starts[-1] if starts else None)
        if n_sentences is not None and value >= n_sentences:
            reason = f"document start {value} is out of range: there are {n_sentences} sentences"
            raise ConllFormatError(path, number, reason)
        starts.append(value)
        last_line = number
    if n_sentences and not starts:
        raise ConllFormatError(path, last_line, "no document starts, but there are sentences")
    return starts


def _group_starts(path: Path, sentences: Sequence[Sentence], n_sents: int) -> list[int]:
    """Document start indices: side file, else `-DOCSTART-` markers, else every n_sents."""
    side_file = doc_starts_path(path)
    if side_file.is_file():
        return read_doc_starts(side_file, len(sentences))
    if not sentences:
        return []
    if any(sentence.doc_start for sentence in sentences):
        marked = [i for i, sentence in enumerate(sentences) if sentence.doc_start]
        return sorted({0, *marked})
    return list(range(0, len(sentences), n_sents))


def sentences_to_doc(vocab: Vocab, sentences: Sequence[Sentence]) -> Doc:
    """Build one Doc whose sentence boundaries and entities follow `sentences`."""
    words = [word for sentence in sentences for word in sentence.words]
    ents = [tag for sentence in sentences for tag in sentence.tags]
    sent_starts = [i == 0 for sentence in sentences for i in range(len(sentence.words))]
    spaces = [True] * (len(words) - 1) + [False]
    return Doc(vocab, words=words, spaces=spaces, sent_starts=sent_starts, ents=ents)


def conll_to_docs(
    vocab: Vocab,
    path: PathLike,
    n_sents: int = 10,
    scheme: str = "auto",
    limit: int | None = None,
) -> list[Doc]:
    """Read a CoNLL NER file and group its sentences into Docs.

    limit: keep only the first `limit` sentences (the whole file is still read and checked);
    the last document is cut there.
    """
    if n_sents < 1:
        raise ValueError(f"n_sents must be at least 1, got {n_sents}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    path = Path(path)
    sentences = read_conll(path, scheme)
    starts = _group_starts(path, sentences, n_sents)
    if limit is not None:
        sentences = sentences[:limit]
        starts = [start for start in starts if start < limit]
    bounds = zip(starts, starts[1:] + [len(sentences)])
    return [sentences_to_doc(vocab, sentences[start:end]) for start, end in bounds]


def convert(
    input_path: PathLike,
    output_path: PathLike,
    n_sents: int = 10,
    scheme: str = "auto",
    limit: int | None = None,
) -> Stats:
    """Convert a CoNLL NER file (its first `limit` sentences) to a `.spacy` DocBin and return
    its counts."""
    docs = conll_to_docs(Vocab(), input_path, n_sents=n_sents, scheme=scheme, limit=limit)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs).to_disk(output_path)
    return Stats.from_docs(docs)


def _jobs(input_path: Path, output_path: Path) -> list[tuple[Path, Path]]:
    """(input, output) file pairs for a file or a directory of `*.conll` files."""
    if not input_path.is_dir():
        if output_path.is_dir():
            return [(input_path, output_path / f"{input_path.stem}.spacy")]
        return [(input_path, output_path)]
    if output_path.exists() and not output_path.is_dir():
        raise ValueError(f"{output_path} must be a directory when the input is a directory")
    inputs = sorted(input_path.glob("*.conll"))
    if not inputs:
        raise ValueError(f"no *.conll files in {input_path}")
    return [(path, output_path / f"{path.stem}.spacy") for path in inputs]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's arguments (shared by `python -m spacy_bilstm_crf convert`)."""
    parser.add_argument("input", type=Path, help="a .conll file, or a directory of them")
    parser.add_argument("output", type=Path, help="the .spacy file, or a directory")
    parser.add_argument("--n-sents", type=int, default=10, help="sentences per doc (fallback)")
    parser.add_argument("--scheme", choices=SCHEMES, default="auto", help="input tag scheme")
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="convert only the first N sentences of each file (0: all)",
    )


def run(args: argparse.Namespace) -> int:
    """Convert as the parsed arguments say, printing each file's counts; returns the exit
    status (1 with one line on bad input)."""
    try:
        for source, target in _jobs(args.input, args.output):
            stats = convert(
                source,
                target,
                n_sents=args.n_sents,
                scheme=args.scheme,
                limit=None if args.limit == 0 else args.limit,
            )
            print(f"{source} -> {target}\n{stats}\n")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m spacy_bilstm_crf convert", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
