"""Ctrl-C during training: finish the step, save, then stop.

The first SIGINT only sets a flag the loop checks after each optimizer step, so the
checkpoint written on the way out is consistent (never half an update). A second SIGINT
raises KeyboardInterrupt at once for users who really want out, unless it arrives within
COALESCE_SECONDS of the first: a terminal, `uv run` or a job scheduler may deliver one
Ctrl-C to the whole process group, so the same key press can arrive twice.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Generator
from types import FrameType

COALESCE_SECONDS = 0.5


@contextlib.contextmanager
def stop_requests() -> Generator[Callable[[], bool]]:
    """Turn the first Ctrl-C into 'stop after this step'; a second one stops at once."""
    first: float | None = None

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal first
        now = time.monotonic()
        if first is None:
            first = now
            print("\nCtrl-C: finishing this step, then saving the last checkpoint (again to abort)")
        elif now - first > COALESCE_SECONDS:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield lambda: False
        return
    try:
        yield lambda: first is not None
    finally:
        signal.signal(signal.SIGINT, previous)
