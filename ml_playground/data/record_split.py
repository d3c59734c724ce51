"""The per-record split both records datasets write (speeches, chat records).

Each record goes to val with probability 1 - train_split, drawn from random.Random(seed)
in input order; when that leaves a split empty, the last record of the other one moves
there, so at least one record lands in each. Records are JSON lines, appended to the
staged train and val files as they come, so memory stays bounded however many there are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import IO

from ml_playground.data.dataset_folder import StagedDataset
from ml_playground.errors import DataError

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
SPLITS = ("train", "val")

# A record as the split writes it: its JSON line, and what it adds to its split's counts
# (e.g. {"characters": 120} or {"tokens": 80, "trained": 30}).
Line = tuple[bytes, Mapping[str, int]]
# Per split ("train", "val"): "records" and every measure the lines carry.
SplitCounts = dict[str, dict[str, int]]


class _SplitFile:
    """Appends records to one split's file; can hand its last record back."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.counts: dict[str, int] = {"records": 0}
        self._last: tuple[int, Line] | None = None  # offset, line

    def write(self, line: Line) -> None:
        self._last = (self.handle.tell(), line)
        self.handle.write(line[0])
        self._count(line[1], 1)

    def take_last(self) -> Line:
        assert self._last is not None and self.counts["records"] > 1
        offset, line = self._last
        self.handle.seek(offset)
        self.handle.truncate()
        self._last = None
        self._count(line[1], -1)
        return line

    def _count(self, measures: Mapping[str, int], sign: int) -> None:
        self.counts["records"] += sign
        for key, value in measures.items():
            self.counts[key] = self.counts.get(key, 0) + sign * value


def write_split(
    lines: Iterable[Line],
    staged: StagedDataset,
    *,
    train_split: float,
    seed: int,
    too_few: Callable[[int], DataError],
) -> SplitCounts:
    """Write `lines` into staged train.jsonl and val.jsonl; returns each split's counts.
    Fewer than two records raise `too_few(number of records)`."""
    rng = random.Random(seed)
    with staged.open(TRAIN_FILE) as train_handle, staged.open(VAL_FILE) as val_handle:
        train, val = _SplitFile(train_handle), _SplitFile(val_handle)
        for line in lines:
            (train if rng.random() < train_split else val).write(line)
        total = train.counts["records"] + val.counts["records"]
        if total < 2:
            raise too_few(total)
        # Small corpora can leave a split empty; the last record of the other one moves.
        for empty, full in ((val, train), (train, val)):
            if empty.counts["records"] == 0:
                empty.write(full.take_last())
    return {"train": train.counts, "val": val.counts}


def per_split(counts: SplitCounts, key: str) -> dict[str, int]:
    """One measure of both splits, as meta.json records it: {"train": n, "val": m}."""
    return {split: counts[split].get(key, 0) for split in SPLITS}
