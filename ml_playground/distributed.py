"""Which process this is in a multi-process run, and the few collectives training needs.

Process management is the launcher's job (torchrun, accelerate launch): it starts one
process per device and sets RANK, LOCAL_RANK and WORLD_SIZE. This module only reads those,
initialises torch.distributed (NCCL on CUDA, Gloo on CPU) and offers the rank-aware
helpers the trainers use: seeding per rank, gathering per-rank state for checkpoints,
averaging evaluation losses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist

from ml_playground.device import Precision
from ml_playground.errors import ConfigError

# A rank that dies leaves the others waiting in a collective; torchrun tears the group
# down when a worker exits, and this bound makes sure nobody waits forever regardless.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
# MPI launchers (mpirun, and `accelerate launch --cpu` with a hostfile, which calls it)
# number processes in variables of their own, which this module does not read.
MPI_WORLD_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; a single-process run is rank 0 of 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and samples."""
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """Read torchrun's environment variables; absent means a single process."""
    if "WORLD_SIZE" not in os.environ:
        _refuse_mpi_launch()
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"invalid RANK/LOCAL_RANK/WORLD_SIZE in the environment: {exc}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world_size}"
        )
    return Ranks(rank=rank, local_rank=local_rank, world_size=world_size)


def _refuse_mpi_launch() -> None:
    """Under an MPI launcher every process would think it runs alone, on the same files."""
    for name in MPI_WORLD_SIZES:
        value = os.environ.get(name, "1")
        if value.isdigit() and int(value) > 1:
            raise ConfigError(
                f"started by an MPI launcher ({name}={value}), which ml-playground cannot "
                "coordinate; use torchrun or `accelerate launch --multi_gpu` instead"
            )


def precision_for(ranks: Ranks, precision: Precision) -> Precision:
    """`precision` on this rank's device: on CUDA each process drives the GPU matching its
    local rank."""
    if precision.device.type == "cuda" and ranks.is_distributed:
        return replace(precision, device=torch.device("cuda", ranks.local_rank))
    return precision


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Generator[None]:
    """Join the job's process group for the duration of a run (no-op for one process)."""
    if not ranks.is_distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, rank=ranks.rank, world_size=ranks.world_size, timeout=COLLECTIVE_TIMEOUT
    )
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    # Tearing down while a peer still finishes its last collective can abort that peer
    # ("terminate called without an active exception", seen with Gloo under load), so
    # ranks that finished normally wait for each other first. A failing rank skips this:
    # its peers must not wait on it.
    dist.barrier()
    dist.destroy_process_group()


def mean_across_ranks(value: float, device: torch.device) -> float:
    """The average of `value` over all ranks (identity for one process)."""
    if not _active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (identity for one process)."""
    if not _active():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_state(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every rank's `state` (tensors and ints of equal shapes on all ranks), in rank order.

    Used for what differs per rank and must survive a checkpoint: batch-sampler streams
    and RNG states (a list of tensors, such as one RNG state per CUDA device, is gathered
    element by element). A collective: all ranks call it, all receive the full list.
    """
    if not _active():
        return [dict(state)]
    world = dist.get_world_size()
    gathered: list[dict[str, Any]] = [{} for _ in range(world)]
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            parts = _all_gather(value)
            for rank in range(world):
                gathered[rank][key] = parts[rank]
        elif (tensors := _tensor_list(value)) is not None:
            columns = [_all_gather(tensor) for tensor in tensors]
            for rank in range(world):
                gathered[rank][key] = [column[rank] for column in columns]
        elif isinstance(value, int):
            parts = _all_gather(torch.tensor([value], dtype=torch.int64))
            for rank in range(world):
                gathered[rank][key] = int(parts[rank].item())
        else:
            raise TypeError(f"cannot gather {key!r} of type {type(value).__name__}")
    return gathered


def _tensor_list(value: object) -> list[torch.Tensor] | None:
    """`value` as a list of tensors, if it is a list or tuple of nothing else."""
    if not isinstance(value, list | tuple):
        return None
    items = cast(Sequence[object], value)
    tensors = [item for item in items if isinstance(item, torch.Tensor)]
    return tensors if len(tensors) == len(items) else None


def replicas_identical(weights: torch.nn.Module | Iterable[torch.Tensor]) -> bool:
    """Whether every rank holds bitwise the same parameters (True for one process).

    DDP keeps replicas in sync by construction; checking at the end of a run catches what
    would silently break that (a rank-dependent op, a parameter DDP does not see). Pass a
    module to check all its parameters, or just the trained ones when the rest is frozen.
    """
    if not _active():
        return True
    tensors = weights.parameters() if isinstance(weights, torch.nn.Module) else weights
    digest = torch.stack(
        [
            torch.stack((p.detach().double().sum(), p.detach().double().square().sum()))
            for p in tensors
        ]
    ).flatten()
    parts = _all_gather(digest)
    return all(torch.equal(parts[0], part) for part in parts[1:])


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    # NCCL moves only CUDA tensors; Gloo only CPU ones.
    on_cuda = dist.get_backend() == "nccl"
    local = tensor.to(torch.device("cuda", torch.cuda.current_device())) if on_cuda else tensor
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    return [part.cpu() for part in parts]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Generator[None]:
    """Rank 0 runs the block while the others wait; then the others run it.

    For idempotent preparation that writes files (tokenizing, packing): rank 0 writes,
    the other ranks find its finished files and only read them. If rank 0 fails inside
    the block it never reaches the barrier; the launcher then ends the waiting ranks.
    """
    main = not _active() or dist.get_rank() == 0
    if not main:
        dist.barrier()
    yield
    if main:
        barrier()
