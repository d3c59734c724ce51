"""Turning a growing list of ids into text piece by piece, for any tokenizer.

Decoding the whole sequence again for every new token costs O(n) per token, O(n^2) per
sample. `TextStream` decodes only a short window instead: the ids since the last point
where the text was complete, plus the piece before it as context. With that context a
tokenizer that renders a token differently at the start of a text (SentencePiece drops
the leading space of the first word) decodes the new ids exactly as in the whole text.
Only the prompt is decoded whole, at the start.

Byte-level tokenizers can end a window in the middle of a UTF-8 character, which decodes
to U+FFFD; those ids are held back until a later id completes the character, or until
`flush` gives up waiting at the end of the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"

Decode = Callable[[Sequence[int]], str]


class TextStream:
    """The text a prompt and the ids `push`ed after it add up to, in order, piece by piece.

    `prompt_text + push(...) + ... + flush()` equals `decode(all ids)` without `hidden`,
    a prefix the model reads but the user does not see (a record opening).
    """

    def __init__(self, decode: Decode, prompt_ids: Sequence[int], *, hidden: str = "") -> None:
        self._decode = decode
        self._ids = list(prompt_ids)
        self._hidden = hidden
        # _ids[:_read] are shown; _ids[_start:_read] is the context the window begins with.
        self._start = self._read = 0
        self.prompt_text = self._advance(wait_for_whole_characters=True)

    def push(self, token: int) -> str:
        """The text `token` completes: "" while it ends inside a character."""
        self._ids.append(token)
        return self._advance(wait_for_whole_characters=True)

    def flush(self) -> str:
        """Whatever is held back, broken characters included."""
        return self._advance(wait_for_whole_characters=False)

    def _advance(self, *, wait_for_whole_characters: bool) -> str:
        shown = self._decode(self._ids[self._start : self._read])
        window = self._decode(self._ids[self._start :])
        if len(window) <= len(shown):
            return ""  # e.g. a special token that decodes to nothing
        if wait_for_whole_characters and window.endswith(REPLACEMENT_CHAR):
            return ""
        self._start, self._read = self._read, len(self._ids)
        piece = window[len(shown) :]
        if self._hidden:
            # The first piece holds the whole prompt, so it holds all of the opening.
            piece, self._hidden = piece.removeprefix(self._hidden), ""
        return piece
