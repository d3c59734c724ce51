"""Training batches from a token file: (x, y) windows of block_size ids, y shifted by one.

"random" draws window offsets uniformly from a generator of its own, seeded with
seed + rank, so each rank sees a different but reproducible stream that no other use
of torch's global RNG can disturb. "sequential" walks the file in non-overlapping
windows: window j starts at j * block_size and belongs to rank j % world_size, and each
rank wraps around to the start when it runs out. `state_dict` captures either position,
so a resumed run draws exactly the batches the uninterrupted run would have.

Where a token's mask flag (dataset_meta.py's layout) is 0, y holds IGNORE_INDEX, which
the losses skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ml_playground.data.dataset_folder import RERUN_HINT
from ml_playground.errors import CheckpointError, DataError

SamplerMode = Literal["random", "sequential"]
IGNORE_INDEX = -100
"""A target no loss counts (PyTorch's cross_entropy default)."""
MASK_DTYPE = "uint8"


class BatchSampler:
    def __init__(
        self,
        data: Path,
        dtype: str,
        block_size: int,
        batch_size: int,
        *,
        mode: SamplerMode = "random",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        mask: Path | None = None,
    ) -> None:
        # block_size and batch_size are positive config keys, rank and world_size the
        # process group's; only the token file is the user's to get wrong.
        self._tokens = open_tokens(data, dtype)
        if len(self._tokens) < block_size + 1:
            raise DataError(
                f"{data} holds {len(self._tokens)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}; lower block_size or prepare more text"
            )
        self._mask = None if mask is None else open_mask(mask, len(self._tokens), data)
        self._block_size = block_size
        self._batch_size = batch_size
        self._mode: SamplerMode = mode
        self._rank = rank
        self._world_size = world_size
        self._device = torch.device(device)
        self._generator = torch.Generator().manual_seed(seed + rank)
        self._cursor = 0  # sequential mode: this rank's windows consumed, modulo _windows
        # Each window needs block_size inputs plus the one target past its end.
        self._windows = (len(self._tokens) - 1) // block_size

    @property
    def block_size(self) -> int:
        """The window length: x and y are (batch_size, block_size)."""
        return self._block_size

    def over(self, data: Path, *, seed: int, mask: Path | None = None) -> BatchSampler:
        """Random batches of the same shape for the same rank and device, from another token
        file of the same dtype (and its mask) and another seed (evaluation draws its batches
        this way)."""
        return BatchSampler(
            data,
            str(self._tokens.dtype),
            self._block_size,
            self._batch_size,
            seed=seed,
            rank=self._rank,
            world_size=self._world_size,
            device=self._device,
            mask=mask,
        )

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x and y, both int64 of shape (batch_size, block_size), on the sampler's device."""
        # Slices rather than one fancy index over all positions: measured, the gather saves
        # at most ~0.1 ms a batch at block_size <= 1024 and costs 1.6-3.7x at 2048-4096.
        span, starts = self._block_size + 1, self.next_starts()
        windows = np.stack([self._tokens[start : start + span] for start in starts])
        windows = windows.astype(np.int64)
        targets = windows[:, 1:].copy()  # a copy: x must keep its ids
        if self._mask is not None:
            # The mask flags each token as a target: window position j + 1 is y's j.
            trained = np.stack([self._mask[start + 1 : start + span] for start in starts])
            targets[trained == 0] = IGNORE_INDEX
        x = torch.as_tensor(np.ascontiguousarray(windows[:, :-1]))
        y = torch.as_tensor(targets)
        if self._device.type == "cuda":
            # Pinned host memory lets the copy overlap with the GPU's work.
            return (
                x.pin_memory().to(self._device, non_blocking=True),
                y.pin_memory().to(self._device, non_blocking=True),
            )
        return x.to(self._device), y.to(self._device)

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Plain tensors and ints only, so checkpoints load with weights_only=True."""
        return {"generator": self._generator.get_state(), "cursor": self._cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        generator, cursor = state.get("generator"), state.get("cursor")
        if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8:
            raise CheckpointError("batch sampler state has no uint8 'generator' tensor")
        if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0:
            raise CheckpointError(f"batch sampler state has a bad 'cursor': {cursor!r}")
        self._generator.set_state(generator.cpu())
        self._cursor = cursor % self._windows

    def next_starts(self) -> list[int]:
        """Where the next batch's windows start in the token file; `next_batch` draws its
        windows from exactly these, and `inspect` shows them."""
        if self._mode == "random":
            # randint's bound is exclusive: the last start leaves room for the final target.
            high = len(self._tokens) - self._block_size
            starts = torch.randint(high, (self._batch_size,), generator=self._generator)
            return [int(start) for start in starts]
        windows = [
            ((self._cursor + i) * self._world_size + self._rank) % self._windows
            for i in range(self._batch_size)
        ]
        self._cursor = (self._cursor + self._batch_size) % self._windows
        return [window * self._block_size for window in windows]


def check_token_ids(path: Path, dtype: str, vocab_size: int) -> None:
    """Every id in the token file is below `vocab_size`; otherwise the file is damaged or
    belongs to another dataset, which the embedding would only report as an IndexError."""
    # A reduction over the map reads the file once, without a copy of it in memory.
    largest = int(open_tokens(path, dtype).max())
    if largest >= vocab_size:
        raise DataError(
            f"{path} holds token id {largest}, outside the vocabulary of {vocab_size}; the "
            f"file is damaged or from another dataset, so {RERUN_HINT}"
        )


def open_mask(
    path: Path, tokens: int, data: Path, remedy: str = RERUN_HINT
) -> np.memmap[Any, np.dtype[Any]]:
    """Map the mask file read-only, after checking it flags exactly the tokens of `data`."""
    size = _file_size(path, "mask", remedy)
    if size != tokens:
        raise DataError(
            f"{path} flags {size} tokens but {data} holds {tokens}; they were not written "
            f"together, so {remedy}"
        )
    return np.memmap(path, dtype=MASK_DTYPE, mode="r")


def open_tokens(path: Path, dtype: str, remedy: str = RERUN_HINT) -> np.memmap[Any, np.dtype[Any]]:
    """Map the token file read-only, after checking its dtype, that it is a file and that
    its size is whole tokens: the one reader of token files, so every verb reports a
    damaged one in the same line. How many tokens are enough is the caller's to say."""
    if dtype not in ("uint16", "uint32"):
        raise DataError(f"unsupported token dtype {dtype!r} for {path}; expected uint16 or uint32")
    size = _file_size(path, "token", remedy)
    if size % np.dtype(dtype).itemsize:
        raise DataError(
            f"{path} has {size} bytes, not a whole number of {dtype} tokens; it is damaged,"
            f" so {remedy}"
        )
    if size == 0:
        # numpy cannot map an empty file; no verb has a use for one.
        raise DataError(f"{path} is empty; {remedy}")
    return np.memmap(path, dtype=dtype, mode="r")


def _file_size(path: Path, what: str, remedy: str) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}; {remedy}") from None
    if not path.is_file():
        raise DataError(f"{what} file {path} is not a file; {remedy}")
    return size
