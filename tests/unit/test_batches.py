"""Batches from token files: shapes and shift, reproducible streams, exact resume, ranks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_playground.data.batches import BatchSampler, SamplerMode
from ml_playground.errors import DataError

MODES: list[SamplerMode] = ["random", "sequential"]


def token_file(tmp_path: Path, tokens: int, dtype: str = "uint16") -> Path:
    """A token file holding 0, 1, 2, ..., so every id also says where it came from."""
    path = tmp_path / f"train_{tokens}_{dtype}.bin"
    np.arange(tokens, dtype=dtype).tofile(path)
    return path


def draws(sampler: BatchSampler, count: int) -> list[torch.Tensor]:
    return [sampler.next_batch()[0] for _ in range(count)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_batches_are_int64_windows_with_targets_shifted_by_one(
    mode: SamplerMode, dtype: str, tmp_path: Path
) -> None:
    sampler = BatchSampler(token_file(tmp_path, 1000, dtype), dtype, 8, 4, mode=mode)

    x, y = sampler.next_batch()

    assert x.shape == y.shape == (4, 8)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.int64))


def test_random_batches_reach_the_last_token_but_never_past_it(tmp_path: Path) -> None:
    sampler = BatchSampler(token_file(tmp_path, 12), "uint16", 10, 64, seed=3)

    targets = torch.cat([sampler.next_batch()[1] for _ in range(20)])

    assert int(targets.max()) == 11
    assert int(targets[:, 0].min()) == 1


def test_same_seed_gives_the_same_batches_and_another_seed_different_ones(
    tmp_path: Path,
) -> None:
    path = token_file(tmp_path, 10_000)

    first = draws(BatchSampler(path, "uint16", 16, 8, seed=1), 3)
    again = draws(BatchSampler(path, "uint16", 16, 8, seed=1), 3)
    other = draws(BatchSampler(path, "uint16", 16, 8, seed=2), 3)

    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_random_batches_leave_torch_global_rng_untouched(tmp_path: Path) -> None:
    sampler = BatchSampler(token_file(tmp_path, 10_000), "uint16", 16, 8)
    before = torch.get_rng_state()

    sampler.next_batch()

    assert torch.equal(torch.get_rng_state(), before)


def test_ranks_draw_different_random_batches(tmp_path: Path) -> None:
    path = token_file(tmp_path, 10_000)

    rank0 = BatchSampler(path, "uint16", 16, 8, seed=1, rank=0, world_size=2).next_batch()[0]
    rank1 = BatchSampler(path, "uint16", 16, 8, seed=1, rank=1, world_size=2).next_batch()[0]

    assert not torch.equal(rank0, rank1)


def test_sequential_mode_walks_the_file_in_block_steps_and_wraps_around(tmp_path: Path) -> None:
    # 41 tokens hold (41 - 1) // 4 = 10 windows of 4 inputs plus one target.
    sampler = BatchSampler(token_file(tmp_path, 41), "uint16", 4, 3, mode="sequential")

    starts = [[int(start) for start in x[:, 0]] for x in draws(sampler, 4)]

    assert starts == [[0, 4, 8], [12, 16, 20], [24, 28, 32], [36, 0, 4]]


def test_sequential_ranks_take_interleaved_windows(tmp_path: Path) -> None:
    path = token_file(tmp_path, 1000)

    def first_starts(rank: int) -> list[int]:
        sampler = BatchSampler(path, "uint16", 10, 3, mode="sequential", rank=rank, world_size=2)
        return [int(start) for start in sampler.next_batch()[0][:, 0]]

    assert first_starts(0) == [0, 20, 40]
    assert first_starts(1) == [10, 30, 50]


@pytest.mark.parametrize("mode", MODES)
def test_resuming_from_state_dict_draws_the_same_next_batches(
    mode: SamplerMode, tmp_path: Path
) -> None:
    path = token_file(tmp_path, 5000)
    uninterrupted = BatchSampler(path, "uint16", 16, 4, mode=mode, seed=7)
    draws(uninterrupted, 5)
    state = uninterrupted.state_dict()
    expected = draws(uninterrupted, 3)

    # The state goes through a checkpoint the way training saves and loads it.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored_state = torch.load(buffer, weights_only=True)
    resumed = BatchSampler(path, "uint16", 16, 4, mode=mode, seed=7)
    resumed.load_state_dict(restored_state)

    assert all(torch.equal(a, b) for a, b in zip(expected, draws(resumed, 3), strict=True))


def test_data_shorter_than_block_size_plus_one_names_the_file_and_both_sizes(
    tmp_path: Path,
) -> None:
    path = token_file(tmp_path, 64)

    with pytest.raises(
        DataError, match=rf"{path} holds 64 tokens, fewer than block_size \+ 1 = 65"
    ):
        BatchSampler(path, "uint16", 64, 4)


def test_missing_token_file_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"token file not found: .*ml-playground prepare"):
        BatchSampler(tmp_path / "train.bin", "uint16", 8, 4)


def test_token_file_with_a_partial_token_is_reported_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    path.write_bytes(b"\x00" * 101)

    with pytest.raises(DataError, match=r"101 bytes, not a whole number of uint16 tokens"):
        BatchSampler(path, "uint16", 8, 4)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_over_another_file_draws_what_a_fresh_sampler_of_that_file_and_seed_draws(
    tmp_path: Path, dtype: str
) -> None:
    train = BatchSampler(token_file(tmp_path, 4000, dtype), dtype, 8, 4, mode="sequential")
    val = tmp_path / "val.bin"
    np.arange(5000, 7000, dtype=dtype).tofile(val)
    fresh = BatchSampler(val, dtype, 8, 4, seed=11, rank=0, world_size=1)

    derived = train.over(val, seed=11)

    assert all(torch.equal(a, b) for a, b in zip(draws(derived, 3), draws(fresh, 3), strict=True))
    assert int(draws(derived, 1)[0].min()) >= 5000  # from the other file
