"""Plot the learned CRF transition scores of a trained `bilstm_crf` pipeline as a heatmap.

    python scripts/plot_transitions.py PIPELINE OUT.png [--component ner]

Rows are the tag a move comes from and columns the tag it goes to, with an extra START row
(scores for a first tag) and END column (scores for a last tag). Moves that the tag scheme
forbids, such as O -> I-PER, are grey with a cross. Their scores are never used.
Without matplotlib (the `project` extra) it says so in one line and draws nothing.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy
import spacy

from spacy_bilstm_crf.ml.bilstm_crf import torch_module

START, END = "START", "END"


def transition_table(
    nlp: spacy.Language, component: str
) -> tuple[list[str], list[str], numpy.ndarray, numpy.ndarray]:
    """Row names, column names, scores and allowed mask (START row and END column included)."""
    pipe = nlp.get_pipe(component)
    crf = torch_module(pipe.model).crf
    tags = list(pipe.tag_names)
    size = len(tags)
    scores = numpy.zeros((size + 1, size + 1), dtype="float32")
    allowed = numpy.zeros((size + 1, size + 1), dtype=bool)
    scores[0, :size] = crf.start_transitions.detach().cpu().numpy()
    allowed[0, :size] = crf.allowed_start.cpu().numpy()
    scores[1:, :size] = crf.transitions.detach().cpu().numpy()
    allowed[1:, :size] = crf.allowed.cpu().numpy()
    scores[1:, size] = crf.end_transitions.detach().cpu().numpy()
    allowed[1:, size] = crf.allowed_end.cpu().numpy()
    return [START, *tags], [*tags, END], scores, allowed


def _number(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text


def plot(
    rows: list[str],
    columns: list[str],
    scores: numpy.ndarray,
    allowed: numpy.ndarray,
    title: str,
    output: Path,
) -> None:
    """Draw the heatmap with values in the allowed cells and write it to `output`."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    masked = numpy.ma.masked_array(scores, mask=~allowed)
    limit = float(numpy.abs(masked).max()) if allowed.any() else 1.0
    cmap = colormaps["RdBu_r"].copy()
    cmap.set_bad("#d9d9d9")
    side = 1.0 + 0.55 * max(len(rows), len(columns))
    figure = Figure(figsize=(side + 1.5, side))  # no pyplot: no GUI backend is needed
    axes = figure.subplots()
    image = axes.imshow(masked, cmap=cmap, vmin=-limit, vmax=limit)
    figure.colorbar(image, ax=axes, shrink=0.8, label="transition score")
    axes.set_xticks(range(len(columns)), columns, rotation=60, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("to tag")
    axes.set_ylabel("from tag")
    axes.set_title(title)
    digits = 1 if limit >= 1 else 2
    for i in range(len(rows)):
        for j in range(len(columns)):
            if allowed[i, j]:
                dark = abs(scores[i, j]) > 0.6 * limit
                color = "white" if dark else "black"
                text, size = _number(float(scores[i, j]), digits), 7
            else:
                color, text, size = "#7f7f7f", "\u00d7", 9
            axes.text(j, i, text, ha="center", va="center", fontsize=size, color=color)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="trained pipeline with a bilstm_crf")
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--component", default="ner", help="name of the bilstm_crf component")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot: skipped, matplotlib is not installed (pip install matplotlib)")
        return 0
    nlp = spacy.load(args.pipeline)
    rows, columns, scores, allowed = transition_table(nlp, args.component)
    title = f"CRF transitions: {args.pipeline}"
    plot(rows, columns, scores, allowed, title, args.output)
    print(f"{args.output}: {len(columns) - 1} tags, {int((~allowed).sum())} forbidden moves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
