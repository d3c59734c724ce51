"""What a verb shows the user: its product on stdout, status lines on stderr.

`ml-playground sample X > out.txt` then holds only the samples, while the terminal still
shows which checkpoint was used and where each sample was saved. A reader that stops
early (`ml-playground sample X | head -1`) closes the pipe; the output then ends quietly
instead of with a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def write(text: str) -> None:
    """Product text on stdout, shown at once.

    When the reader has gone (a broken pipe) the rest of the output is dropped and the
    run carries on, so what it saves to disk is still complete.
    """
    if text:
        _guarded(lambda: sys.stdout.write(text))
    _guarded(sys.stdout.flush)


def status(line: str) -> None:
    """A status line on stderr, after what stdout holds so far, so a terminal shows both
    in the order they happened."""
    _guarded(sys.stdout.flush)
    print(line, file=sys.stderr, flush=True)


def _guarded(action: Callable[[], object]) -> None:
    try:
        action()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at the null device: its reader has gone, and the text still buffered
    would otherwise fail again (with a traceback) when Python flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
