"""The per-record split rule of the dataset writer (speeches, chat records), into token files.

Each record goes to val with probability 1 - train_split, drawn from random.Random(seed)
in input order; when that leaves a split empty, the last record of the other one moves
there, so at least one record lands in each. Records are appended to their split's token
(and mask) file as they come, so memory stays bounded however many records there are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from ml_playground.data.batches import MASK_DTYPE
from ml_playground.data.dataset_folder import StagedDataset
from ml_playground.errors import DataError

SPLITS = ("train", "val")

# Per split ("train", "val"): "tokens", and from the per-record split "records" and every
# measure the records carry.
SplitCounts = dict[str, dict[str, int]]


def token_file(split: str) -> str:
    return f"{split}.bin"


def mask_file(split: str) -> str:
    return f"{split}.mask.bin"


@dataclass(frozen=True)
class SplitRecord:
    """A record as the split writes it: its token ids, its target flags (None: every
    token is one), and what it adds to its split's counts (e.g. {"characters": 120})."""

    ids: Sequence[int]
    mask: Sequence[int] | None = None
    measures: Mapping[str, int] | None = None


class _SplitFiles:
    """Appends records to one split's token (and mask) file; can hand its last one back."""

    def __init__(self, tokens: IO[Any], mask: IO[Any] | None, dtype: str) -> None:
        self.tokens, self.mask, self.dtype = tokens, mask, dtype
        self.counts: dict[str, int] = {"records": 0, "tokens": 0}
        self._last: tuple[int, int, SplitRecord] | None = None  # offsets, record

    def write(self, record: SplitRecord) -> None:
        mask_at = self.mask.tell() if self.mask is not None else 0
        self._last = (self.tokens.tell(), mask_at, record)
        self.tokens.write(np.asarray(record.ids, dtype=self.dtype).tobytes())
        if self.mask is not None:
            flags = record.mask if record.mask is not None else [1] * len(record.ids)
            self.mask.write(np.asarray(flags, dtype=MASK_DTYPE).tobytes())
        self._count(record, 1)

    def take_last(self) -> SplitRecord:
        assert self._last is not None and self.counts["records"] > 1
        tokens_at, mask_at, record = self._last
        for handle, offset in ((self.tokens, tokens_at), (self.mask, mask_at)):
            if handle is not None:
                handle.seek(offset)
                handle.truncate()
        self._last = None
        self._count(record, -1)
        return record

    def _count(self, record: SplitRecord, sign: int) -> None:
        self.counts["records"] += sign
        self.counts["tokens"] += sign * len(record.ids)
        for key, value in (record.measures or {}).items():
            self.counts[key] = self.counts.get(key, 0) + sign * value


def write_split(
    records: Iterable[SplitRecord],
    staged: StagedDataset,
    *,
    dtype: str,
    masked: bool,
    train_split: float,
    seed: int,
    too_few: Callable[[int], DataError],
) -> SplitCounts:
    """Write `records` into staged train.bin and val.bin (with their masks when `masked`);
    returns each split's counts. Fewer than two records raise `too_few(number of records)`."""
    rng = random.Random(seed)
    with ExitStack() as files:

        def split_files(split: str) -> _SplitFiles:
            tokens = files.enter_context(staged.open(token_file(split)))
            mask = files.enter_context(staged.open(mask_file(split))) if masked else None
            return _SplitFiles(tokens, mask, dtype)

        train, val = split_files("train"), split_files("val")
        for record in records:
            (train if rng.random() < train_split else val).write(record)
        total = train.counts["records"] + val.counts["records"]
        if total < 2:
            raise too_few(total)
        for empty, full in ((val, train), (train, val)):
            if empty.counts["records"] == 0:
                empty.write(full.take_last())
    return {"train": train.counts, "val": val.counts}
