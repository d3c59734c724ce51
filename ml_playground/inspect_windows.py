"""What `inspect` prints of an opened dataset: its summary and the first training windows.

The windows shown are the first ones the run's BatchSampler draws (same seed, mode and
batch size, rank 0), with the targets apart from the rest: in colour on a terminal, and
between the plain markers TARGET_OPEN and TARGET_CLOSE anywhere else, so
`inspect EXP > windows.txt` reads the same without escape codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ml_playground.config import ExperimentConfig
from ml_playground.data.batches import BatchSampler
from ml_playground.inspection import Dataset, Record

TARGET_OPEN, TARGET_CLOSE = "[[", "]]"
"""The plain markers around target tokens where stdout is not a terminal."""
TARGET_COLOUR, RESET = "\x1b[1;32m", "\x1b[0m"
"""Targets in bold green on a terminal; the other tokens keep the terminal's colour."""


# --- windows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A training window: block_size inputs and the target past the last one."""

    number: int
    start: int
    ids: tuple[int, ...]
    targets: tuple[bool, ...]  # per token: does the loss count it (the first token never)
    record: Record | None

    @property
    def starts_mid_record(self) -> bool:
        return self.record is not None and self.record.start != self.start


def draw_windows(dataset: Dataset, config: ExperimentConfig, count: int) -> list[Window]:
    """The first `count` windows the run's batcher draws from the train split."""
    train, runtime = config.train, config.train.runtime
    sampler = BatchSampler(
        dataset.train_file,
        dataset.dtype,
        train.block_size,
        train.data.batch_size,
        mode=train.data.sampler,
        seed=runtime.seed,
        mask=dataset.train_mask,
    )
    starts: list[int] = []
    while len(starts) < count:
        starts += sampler.next_starts()
    split = dataset.split("train")
    span = train.block_size + 1
    windows: list[Window] = []
    for number, start in enumerate(starts[:count], start=1):
        ids = tuple(int(i) for i in split.tokens[start : start + span])
        if split.mask is None:
            flags = [True] * span
        else:
            flags = [bool(flag) for flag in split.mask[start : start + span]]
        flags[0] = False  # the first token is only read: no window position predicts it
        windows.append(Window(number, start, ids, tuple(flags), split.record_at(start)))
    return windows


def render_window(window: Window, decode: Callable[[Sequence[int]], str], *, colour: bool) -> str:
    """The window's text, its targets marked: coloured, or between the plain markers."""
    pieces: list[str] = []
    for is_target, ids in _runs(window.ids, window.targets):
        text = decode(ids)
        if not is_target:
            pieces.append(text)
        elif colour:
            pieces.append(f"{TARGET_COLOUR}{text}{RESET}")
        else:
            pieces.append(f"{TARGET_OPEN}{text}{TARGET_CLOSE}")
    return "".join(pieces)


def _runs(ids: Sequence[int], flags: Sequence[bool]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens with the same flag, decoded together so that a character split
    over several byte-level tokens reads whole."""
    runs: list[tuple[bool, list[int]]] = []
    for token, flag in zip(ids, flags, strict=True):
        if runs and runs[-1][0] == flag:
            runs[-1][1].append(token)
        else:
            runs.append((flag, [token]))
    return runs


def window_heading(window: Window, count: int) -> str:
    where = ""
    if window.record is not None:
        offset = window.start - window.record.start
        where = f", token {offset + 1} of the record at {window.record.location()}"
    targets = sum(window.targets)
    return (
        f"--- window {window.number}/{count}: train tokens {window.start:,}.."
        f"{window.start + len(window.ids) - 1:,}{where}; {targets} of {len(window.ids) - 1} "
        "predicted tokens are targets ---"
    )


# --- what it is -----------------------------------------------------------------------------


def summary_lines(dataset: Dataset, config: ExperimentConfig) -> list[str]:
    """What the dataset is: source, format, tokenizer, context, counts, record lengths."""
    context = config.train.block_size
    lines = [
        f"dataset    {dataset.folder}",
        f"source     {dataset.source}",
        f"format     {dataset.kind}",
        f"tokenizer  {dataset.tokenizer}, vocabulary {dataset.vocab_size:,}",
        f"context    {context:,} tokens per window ({_block_size_key(config)}); "
        f"{config.train.data.batch_size} windows per batch, {config.train.data.sampler} sampler",
        "",
        f"{'split':<6} {'records':>9} {'tokens':>12} {'targets':>12} {'share':>7}",
    ]
    for split in dataset.splits:
        records = f"{len(split.records):,}" if split.records else "-"
        share = split.targets / len(split.tokens) if len(split.tokens) else 0.0
        lines.append(
            f"{split.name:<6} {records:>9} {len(split.tokens):>12,} {split.targets:>12,} "
            f"{share:>7.1%}"
        )
    lengths = [record.length for split in dataset.splits for record in split.records]
    if lengths:
        array = np.asarray(lengths)
        longer = int(np.count_nonzero(array > context))
        lines += [
            "",
            f"record lengths in tokens: median {int(np.median(array)):,}, "
            f"p90 {int(np.percentile(array, 90)):,}, max {int(array.max()):,}",
            f"{longer:,} of {len(lengths):,} records are longer than the context of {context:,}"
            + (
                ": packing puts records end to end, so windows cut them and no window holds "
                "one whole"
                if longer
                else ""
            ),
        ]
    return lines


def _block_size_key(config: ExperimentConfig) -> str:
    train = config.train
    if train.data.block_size is not None:
        return "train.data.block_size"
    return "train.hf_model.block_size" if train.hf_model else "train.model.block_size"


def legend(*, colour: bool) -> str:
    if colour:
        return f"targets (tokens the loss counts) are {TARGET_COLOUR}bold green{RESET}"
    return (
        f"targets (tokens the loss counts) are between {TARGET_OPEN} and {TARGET_CLOSE}; "
        "the rest is context only"
    )
