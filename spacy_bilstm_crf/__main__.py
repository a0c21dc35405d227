"""`python -m spacy_bilstm_crf COMMAND ...` (see `cli/`).

A Ctrl-C at any moment ends a command with one line and exit code 130, never a traceback.
While the commands' modules import torch and spaCy (seconds), a Ctrl-C is noted and acted
on once they are in: a KeyboardInterrupt raised inside an import can land in the import
system's callbacks, where Python prints it and goes on, or in torch's C++ code, which
aborts. After that, a KeyboardInterrupt that Python could not raise (in a weakref callback)
is delivered again, so that it lands in the command's own code.
"""

import os
import signal
import sys


def _redeliver_interrupts(unraisable: "sys.UnraisableHookArgs") -> None:
    """`sys.unraisablehook`: a KeyboardInterrupt that could not be raised is sent again."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        return
    sys.__unraisablehook__(unraisable)


def run() -> int:
    """Import the commands and run one; a Ctrl-C anywhere is one line, exit code 130."""
    noted: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        from .cli import main
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.unraisablehook = _redeliver_interrupts
    try:
        if noted:
            raise KeyboardInterrupt
        return main()
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        # Raised inside code run by exec() (a dataclass being made), the KeyboardInterrupt
        # also set CPython's flag that kills the process with SIGINT at exit although it was
        # handled here; running any exec() clears it, so that the exit code is this one.
        exec("")
        return 130


if __name__ == "__main__":
    sys.exit(run())
