"""Distil static word vectors from a transformer encoder, for `include_static_vectors`.

    python scripts/distill_vectors.py corpus/conll2003/train.spacy corpus/conll2003/vectors \
        --method wordpiece --threads 2

Where no pretrained word vectors can be fetched, the packaged all-MiniLM-L6-v2 still knows
English. This writes a spaCy pipeline folder whose `vocab.vectors` holds one vector per
lowercased word type of the training text and per whole word of the encoder's own vocabulary
(the encoder is uncased). The table is keyed by ORTH, as spaCy's StaticVectors reads it: each
row has the keys of the word's lowercase, Title, UPPER and seen spellings. (spaCy 3.8 does not
save a `Vectors(attr="LOWER")` setting to disk, so a LOWER-keyed table would silently miss
every capitalised token, names included, after loading.)

- `wordpiece` (the default, which configs/bilstm_crf.cfg uses): the mean of the word's
  wordpiece embedding rows (the encoder's input table), the same function of the spelling for
  every word;
- `contextual`: the encoder's hidden states (mean of layers 1 to N), averaged over the word's
  wordpieces and over every occurrence in the training text; words of the encoder's vocabulary
  that the text lacks are encoded alone. It scored below no vectors on CoNLL-2003: words unseen
  in training get vectors of another kind than those the tagger learned from.

Use the folder as `[paths] vectors` with `include_static_vectors = true`. Only the training
text is read, never dev or test. Needs the `transformers` extra at distillation time only: the
trained pipeline stores the table in its vocab.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy
import spacy
import torch
from spacy.tokens import DocBin
from spacy.util import minibatch
from spacy.vectors import Vectors
from transformers import AutoModel, AutoTokenizer

from spacy_bilstm_crf.features import packaged_minilm

WINDOW = 128


def spellings(windows: list[list[str]], words: list[str]) -> dict[str, set[str]]:
    """For each lowercased word: its lowercase, Title and UPPER forms and the forms seen."""
    forms = {word: {word, word.title(), word.upper()} for word in words}
    for window in windows:
        for form in window:
            if form.lower() in forms:
                forms[form.lower()].add(form)
    return forms


def training_words(path: Path) -> list[list[str]]:
    """The training text as windows of at most WINDOW words, each window within one doc."""
    nlp = spacy.blank("en")
    windows = []
    for doc in DocBin().from_disk(path).get_docs(nlp.vocab):
        words = [token.text for token in doc if not token.is_space]
        windows += [words[i : i + WINDOW] for i in range(0, len(words), WINDOW)]
    return windows


def vocabulary_words(tokenizer: AutoTokenizer) -> list[str]:
    """Whole words of the encoder's vocabulary: no `##` pieces, no special tokens."""
    return [
        word
        for word in tokenizer.get_vocab()
        if not word.startswith("##") and not (word.startswith("[") and word.endswith("]"))
    ]


def wordpiece_vectors(
    model: AutoModel, tokenizer: AutoTokenizer, words: list[str]
) -> numpy.ndarray:
    """Mean of each word's wordpiece embedding rows."""
    table = model.get_input_embeddings().weight.detach().numpy()
    out = numpy.zeros((len(words), table.shape[1]), dtype="float32")
    for i, word in enumerate(words):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids:
            out[i] = table[ids].mean(axis=0)
    return out


@torch.inference_mode()
def contextual_sums(
    model: AutoModel, tokenizer: AutoTokenizer, windows: list[list[str]], batch_size: int = 32
) -> tuple[dict[str, numpy.ndarray], dict[str, int]]:
    """Sum and count of each lowercased word's contextual vectors over `windows`."""
    sums: dict[str, numpy.ndarray] = {}
    counts: dict[str, int] = {}
    for batch in minibatch(windows, batch_size):
        encoded = tokenizer(
            list(batch),
            is_split_into_words=True,
            truncation=True,
            max_length=512,
            padding=True,
            return_tensors="pt",
        )
        hidden = model(**encoded, output_hidden_states=True).hidden_states
        states = torch.stack(hidden[1:]).mean(dim=0).numpy()
        for row, words in enumerate(batch):
            word_ids = encoded.word_ids(row)
            pieces: dict[int, list[int]] = {}
            for position, word_id in enumerate(word_ids):
                if word_id is not None:
                    pieces.setdefault(word_id, []).append(position)
            for word_id, positions in pieces.items():
                key = words[word_id].lower()
                vector = states[row, positions].mean(axis=0)
                if key in sums:
                    sums[key] += vector
                    counts[key] += 1
                else:
                    sums[key] = vector.copy()
                    counts[key] = 1
    return sums, counts


def distil(
    train: Path, method: str, model_path: str, encoder_vocabulary: bool = True
) -> tuple[dict[str, set[str]], numpy.ndarray]:
    """Spellings of each word (lowercased, unique, in row order) and the words' vectors,
    standardised per dimension."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    windows = training_words(train)
    encoder_words = vocabulary_words(tokenizer) if encoder_vocabulary else []
    if method == "wordpiece":
        words = sorted({w.lower() for window in windows for w in window} | set(encoder_words))
        vectors = wordpiece_vectors(model, tokenizer, words)
    else:
        sums, counts = contextual_sums(model, tokenizer, windows)
        alone = [[word] for word in encoder_words if word not in sums]
        extra_sums, extra_counts = contextual_sums(model, tokenizer, alone, batch_size=256)
        sums.update(extra_sums)
        counts.update(extra_counts)
        words = sorted(sums)
        vectors = numpy.stack([sums[w] / counts[w] for w in words]).astype("float32")
    vectors -= vectors.mean(axis=0)
    vectors /= vectors.std(axis=0) + 1e-6
    return spellings(windows, words), vectors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", type=Path, help="training .spacy file (its text only)")
    parser.add_argument("output", type=Path, help="pipeline folder to write")
    parser.add_argument("--method", choices=["wordpiece", "contextual"], default="wordpiece")
    parser.add_argument("--model", default=None, help="encoder folder or name (packaged MiniLM)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--training-words-only",
        action="store_true",
        help="leave out the encoder's own whole words (a smaller table)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or packaged_minilm()
    forms, vectors = distil(args.train, args.method, model, not args.training_words_only)
    nlp = spacy.blank("en")
    table = Vectors(strings=nlp.vocab.strings, data=vectors, name=f"minilm_{args.method}")
    for row, spellings_of_word in enumerate(forms.values()):
        for form in spellings_of_word:
            table.add(nlp.vocab.strings.add(form), row=row)
    nlp.vocab.vectors = table
    args.output.parent.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(args.output)
    print(
        f"{len(forms):,} vectors of width {vectors.shape[1]} ({args.method}), "
        f"{table.n_keys:,} keys -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
