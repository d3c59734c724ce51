"""Printing generated text as it grows, shared by the GPT and the fine-tuned samplers."""

from __future__ import annotations

import sys

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Writes to stdout what each newer decoding of a sample adds to the last one.

    Byte-level tokenizers can end a decoding in the middle of a UTF-8 character, which
    decodes to U+FFFD; that tail is held back until the next token completes it.
    """

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._shown = ""

    def update(self, text: str) -> None:
        if self._enabled:
            self._show(text.rstrip(REPLACEMENT_CHAR))

    def finish(self, text: str) -> None:
        if self._enabled:
            self._show(text)
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _show(self, ready: str) -> None:
        if ready.startswith(self._shown) and len(ready) > len(self._shown):
            sys.stdout.write(ready[len(self._shown) :])
            sys.stdout.flush()
            self._shown = ready
