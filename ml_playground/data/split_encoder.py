"""The character split of a text corpus, encoded as it streams in.

The corpus arrives in chunks (corpus.py); the first `train_chars` characters go to
train.bin, the rest to val.bin. Each split's text is encoded up to a cut where encoding
the pieces separately gives the ids of the whole, and the rest waits for the next chunk,
so memory stays bounded by a chunk or so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

import numpy as np

from ml_playground.data.dataset_folder import StagedDataset
from ml_playground.data.dataset_meta import TokenDType
from ml_playground.data.record_split import SplitCounts, token_file
from ml_playground.data.tokenizer import Tokenizer


def write_character_split(
    pieces: Iterable[str],
    staged: StagedDataset,
    tokenizer: Tokenizer,
    dtype: TokenDType,
    *,
    train_chars: int,
    max_carry: int,
) -> SplitCounts:
    """Encode the corpus's `pieces` into staged train.bin and val.bin; the tokens of each."""
    with staged.open(token_file("train")) as train_out, staged.open(token_file("val")) as val_out:
        train = SplitEncoder(tokenizer, train_out, dtype, max_carry=max_carry)
        val = SplitEncoder(tokenizer, val_out, dtype, max_carry=max_carry)
        train_left = train_chars
        for text in pieces:
            head, tail = text[:train_left], text[train_left:]
            train_left -= len(head)
            train.feed(head)
            val.feed(tail)
        return {"train": {"tokens": train.finish()}, "val": {"tokens": val.finish()}}


class SplitEncoder:
    """Encodes one split's text as it streams in and appends the ids to its file.

    Text is encoded up to a cut where encoding the pieces separately gives the same ids
    as encoding the whole (see `_encodable_prefix`); the rest waits for more text.
    """

    def __init__(
        self, tokenizer: Tokenizer, out: IO[Any], dtype: TokenDType, *, max_carry: int
    ) -> None:
        self._tokenizer = tokenizer
        self._out = out
        self._dtype = np.dtype(dtype)
        self._max_carry = max_carry
        self._pending = ""
        self._tokens = 0

    def feed(self, text: str) -> None:
        if not text:
            return
        pending = self._pending + text
        cut = _encodable_prefix(pending, self._max_carry)
        self._encode(pending[:cut])
        self._pending = pending[cut:]

    def finish(self) -> int:
        """Encode what is still pending; returns the number of tokens written."""
        self._encode(self._pending)
        self._pending = ""
        return self._tokens

    def _encode(self, text: str) -> None:
        if not text:
            return
        ids = np.asarray(self._tokenizer.encode(text), dtype=self._dtype)
        self._out.write(ids.tobytes())
        self._tokens += int(ids.size)


def _encodable_prefix(text: str, max_carry: int) -> int:
    """How much of `text` to encode now, leaving at most `max_carry` characters pending.

    BPE pre-tokenization (the regex of gpt2/r50k, cl100k, o200k) always makes a lone
    "\\n" between two non-whitespace characters a piece boundary, so cutting right after
    such a newline yields exactly the ids of the uncut text. Failing that, the cut goes
    after the last newline, and in text without newlines after everything: the ids at
    such a cut may differ from whole-text encoding, but decoding still gives the text back
    exactly. The char tokenizer is indifferent to where the cuts fall.
    """
    floor = max(len(text) - max_carry - 1, 0)
    last_newline = text.rfind("\n", floor)
    pos = last_newline
    while pos > 0:
        if pos + 1 < len(text) and not text[pos - 1].isspace() and not text[pos + 1].isspace():
            return pos + 1
        pos = text.rfind("\n", floor, pos)
    return last_newline + 1 if last_newline >= 0 else len(text)
