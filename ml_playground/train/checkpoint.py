"""Checkpoints of the from-scratch GPT: save atomically, load safely, pick which to read.

A checkpoint is self-contained: weights, optimizer and grad-scaler state, the iteration,
the best validation loss, every RNG state the loop draws from (so a resumed run replays
exactly), the model arguments, the effective config and the tokenizer spec. It holds only
tensors and plain containers, so `torch.load(weights_only=True)` reads it without
unpickling arbitrary objects.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from ml_playground import atomic
from ml_playground.errors import CheckpointError

FORMAT_VERSION = 1
LAST = "ckpt_last.pt"
BEST = "ckpt_best.pt"
LEGACY = "ckpt.pt"
SAMPLING_ORDER = (BEST, LAST, LEGACY)
COMPILED_PREFIX = "_orig_mod."

StateDict = dict[str, Any]


@dataclass(frozen=True)
class Checkpoint:
    model: Mapping[str, torch.Tensor]
    optimizer: StateDict
    scaler: StateDict | None
    iter_num: int
    best_val_loss: float
    model_args: Mapping[str, int | float | bool]
    config: Mapping[str, Any]
    tokenizer: Mapping[str, Any]
    rng: Mapping[str, Any]
    sampler: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": strip_compile_prefix(self.model),
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "model_args": dict(self.model_args),
            "config": dict(self.config),
            "tokenizer": dict(self.tokenizer),
            "rng": dict(self.rng),
            "sampler": dict(self.sampler),
        }


def strip_compile_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.compile wraps the module and prefixes every key; checkpoints never carry it."""
    return {key.removeprefix(COMPILED_PREFIX): value for key, value in state.items()}


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Serialize in memory, then write atomically: a crash never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(checkpoint.payload(), buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load(path: Path) -> Checkpoint:
    """Read and validate a checkpoint; any damage is an error naming the file."""
    try:
        raw: object = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an ml-playground checkpoint "
            f"({type(exc).__name__}); delete it to start fresh or restore a backup"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dictionary; delete or replace it")
    payload = cast(dict[str, Any], raw)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version!r}, expected {FORMAT_VERSION}"
        )
    required = ("model", "optimizer", "iter_num", "best_val_loss", "model_args", "tokenizer")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; delete or replace it")
    return Checkpoint(
        model=strip_compile_prefix(payload["model"]),
        optimizer=payload["optimizer"],
        scaler=payload.get("scaler"),
        iter_num=int(payload["iter_num"]),
        best_val_loss=float(payload["best_val_loss"]),
        model_args=payload["model_args"],
        config=payload.get("config", {}),
        tokenizer=payload["tokenizer"],
        rng=payload.get("rng", {}),
        sampler=payload.get("sampler", {}),
    )


def for_sampling(out_dir: Path) -> Path:
    """The checkpoint sampling reads: best, else last, else a legacy ckpt.pt."""
    for name in SAMPLING_ORDER:
        candidate = out_dir / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no checkpoint in {out_dir} (looked for {', '.join(SAMPLING_ORDER)}); "
        "train first with `ml-playground train <experiment>`"
    )


def capture_rng() -> dict[str, Any]:
    """The global torch RNG states (dropout draws from them)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
