"""Every rank's random streams (batch sampler and RNG), saved so a resumed run replays them.

Each rank of a run draws its own batches and dropout masks. A checkpoint (or a fine-tuning
training state) keeps them all, in rank order, as `{"per_rank": [...]}`; both trainers save
and restore them through these two functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ml_playground.data.batches import BatchSampler
from ml_playground.distributed import Ranks, gather_state
from ml_playground.train.checkpoint import capture_rng, restore_rng


@dataclass(frozen=True)
class RankStreams:
    samplers: list[dict[str, Any]]  # one BatchSampler state per rank, in rank order
    rngs: list[dict[str, Any]]  # one capture_rng() per rank


def gather_streams(sampler: BatchSampler) -> RankStreams:
    """Every rank's sampler and RNG state; a collective, so all ranks call it."""
    return RankStreams(gather_state(sampler.state_dict()), gather_state(capture_rng()))


def restore_streams(
    sampler: BatchSampler,
    samplers: Sequence[Mapping[str, Any]],
    rngs: Sequence[Mapping[str, Any]],
    ranks: Ranks,
    *,
    source: str,
) -> None:
    """Continue this rank's saved streams; if `source` was saved by another number of
    ranks, the streams restart from their seeds and rank 0 says so."""
    if len(samplers) == ranks.world_size == len(rngs):
        sampler.load_state_dict(samplers[ranks.rank])
        restore_rng(rngs[ranks.rank])
    elif ranks.is_main:
        print(
            f"resume: {source} holds batch streams for {len(samplers)} rank(s), this run "
            f"has {ranks.world_size}; streams restart from their seeds (not an exact replay)"
        )
