"""`python -m spacy_bilstm_crf COMMAND ...`: the package's commands.

`convert` (CoNLL files to `.spacy`), `annotate` (a dataset, in resumable shards), `calibrate`
(entity probabilities), `select` (what to annotate next), `ingest` (the answers back as
training data) and `serve` (a Label Studio ML backend). A bad setting or input is one line
on stderr and exit code 2.
"""

import argparse
import sys
from collections.abc import Sequence

from ..active.formats import FormatError
from ..annotate import AnnotateError, Interrupted
from ..calibration import CalibrationError
from ..serve.server import ServeError
from . import annotate, calibrate, convert, ingest, select, serve

COMMANDS = (convert, annotate, calibrate, select, ingest, serve)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; a bad setting is one line, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m spacy_bilstm_crf")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (AnnotateError, CalibrationError, FormatError, ServeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
