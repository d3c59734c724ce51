"""Ctrl-C during training: finish the step, save, then stop.

The first SIGINT only sets a flag the loop checks after each optimizer step, so the
checkpoint written on the way out is consistent (never half an update). A second SIGINT
raises KeyboardInterrupt at once for users who really want out.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Generator
from types import FrameType


@contextlib.contextmanager
def stop_requests() -> Generator[Callable[[], bool]]:
    """Turn the first Ctrl-C into 'stop after this step'; a second one stops at once."""
    requested = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        print("\nCtrl-C: finishing this step, then saving the last checkpoint (again to abort)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)
