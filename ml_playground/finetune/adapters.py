"""The out_dir of a fine-tuning run: adapters, the training state, tokenizer and meta.json.

    out_dir/adapters/last/    written at every evaluation and on Ctrl-C; training resumes here
    out_dir/adapters/best/    the adapters with the lowest validation loss so far
    out_dir/adapters/final/   the adapters when max_iters was reached
    out_dir/tokenizer/        the dataset's tokenizer (with any added tokens)
    out_dir/meta.json         base model, vocabulary, record format: sampling needs only out_dir
    out_dir/merged/           base + adapters as one transformers model (hf_model.save_merged)

Each adapters folder is what peft's save_pretrained writes plus `training_state.pt`
(optimizer, grad scaler, step, best loss, and every rank's RNG and batch-sampler state),
so resuming from it continues exactly where the run stopped. A folder is replaced as a
whole (a staging folder moved into place), so an interruption never leaves adapters and
state that disagree. The state holds only tensors and plain containers and is read with
weights_only=True.
"""

from __future__ import annotations

import io
import json
import shutil
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_playground import atomic
from ml_playground.errors import CheckpointError
from ml_playground.finetune.model import save_weights

ADAPTERS_DIR = "adapters"
BEST = "best"
LAST = "last"
FINAL = "final"
SAMPLING_ORDER = (BEST, FINAL, LAST)
TOKENIZER_DIR = "tokenizer"
MERGED_DIR = "merged"
RUN_META = "meta.json"
STATE_FILE = "training_state.pt"
# Version 1 held one process's RNG and sampler state; version 2 holds one per rank.
STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)

StateDict = dict[str, Any]


@dataclass(frozen=True)
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue exactly."""

    iter_num: int
    best_val_loss: float
    optimizer: StateDict
    scaler: StateDict | None
    rng: Sequence[Mapping[str, Any]]  # one entry per rank, in rank order
    sampler: Sequence[Mapping[str, Any]]  # as rng: each rank draws its own batches
    trainable: tuple[str, ...]  # parameter names, in optimizer order

    def payload(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "rng": {"per_rank": [dict(entry) for entry in self.rng]},
            "sampler": {"per_rank": [dict(entry) for entry in self.sampler]},
            "trainable": list(self.trainable),
        }


@dataclass(frozen=True)
class RunMeta:
    """What out_dir/meta.json records about the run."""

    base_model: str
    revision: str | None
    vocab_size: int
    structure_tokens: tuple[str, ...]
    added_tokens: tuple[str, ...]
    doc_separator: str
    lora: bool
    # How a record opens and closes, and the tokens that end generation besides EOS.
    # When all three are left out (runs from before they were recorded), they follow
    # from structure_tokens (see `_record_shape`).
    record_opening: str = ""
    record_closing: str = ""
    stop_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.record_opening or self.record_closing or self.stop_tokens):
            opening, closing, stop = _record_shape(self.structure_tokens)
            # A frozen dataclass sets its own fields only through object.__setattr__.
            object.__setattr__(self, "record_opening", opening)
            object.__setattr__(self, "record_closing", closing)
            object.__setattr__(self, "stop_tokens", stop)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "hf-finetune",
            "base_model": self.base_model,
            "revision": self.revision,
            "vocab_size": self.vocab_size,
            "structure_tokens": list(self.structure_tokens),
            "added_tokens": list(self.added_tokens),
            "doc_separator": self.doc_separator,
            "lora": self.lora,
            "record_opening": self.record_opening,
            "record_closing": self.record_closing,
            "stop_tokens": list(self.stop_tokens),
            "tokenizer": TOKENIZER_DIR,
        }

    @classmethod
    def read(cls, out_dir: Path) -> RunMeta:
        path = out_dir / RUN_META
        try:
            raw: object = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(
                f"{path} not found: {out_dir} holds no fine-tuning run; "
                "train first with `ml-playground train <experiment>`"
            ) from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path} ({exc}); train again") from None
        fields: Mapping[str, Any] = (
            typing.cast(Mapping[str, Any], raw) if isinstance(raw, Mapping) else {}
        )
        try:
            revision = fields["revision"]
            return cls(
                base_model=str(fields["base_model"]),
                revision=None if revision is None else str(revision),
                vocab_size=int(fields["vocab_size"]),
                structure_tokens=tuple(str(token) for token in fields["structure_tokens"]),
                added_tokens=tuple(str(token) for token in fields["added_tokens"]),
                doc_separator=str(fields["doc_separator"]),
                lora=bool(fields["lora"]),
                record_opening=str(fields.get("record_opening", "")),
                record_closing=str(fields.get("record_closing", "")),
                stop_tokens=tuple(str(token) for token in fields.get("stop_tokens", ())),
            )
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path} is not the meta.json of a fine-tuning run; train again"
            ) from None

    def write(self, out_dir: Path) -> None:
        atomic.write_json(out_dir / RUN_META, self.to_json())


def _record_shape(structure_tokens: Sequence[str]) -> tuple[str, str, tuple[str, ...]]:
    """(opening, closing, stop tokens) of records wrapped in `structure_tokens` (start, end),
    one per line as prepare writes them; none for records without them."""
    if not structure_tokens:
        return "", "", ()
    start, end = structure_tokens[0], structure_tokens[-1]
    return f"{start}\n", f"\n{end}", (end,)


def adapters_dir(out_dir: Path, name: str) -> Path:
    return out_dir / ADAPTERS_DIR / name


def save_adapters(out_dir: Path, name: str, model: nn.Module, state: TrainingState) -> Path:
    """Replace out_dir/adapters/<name> with the model's trained weights and `state`."""
    buffer = io.BytesIO()
    torch.save(state.payload(), buffer)
    target = adapters_dir(out_dir, name)
    with atomic.atomic_directory(target) as staging:
        save_weights(model, staging)
        (staging / STATE_FILE).write_bytes(buffer.getvalue())
    return target


def has_state(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file()


def load_state(folder: Path) -> TrainingState:
    """The training state saved next to adapters; damage is an error naming the folder."""
    path = folder / STATE_FILE
    try:
        raw: object = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"training state not found: {path}") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"training state {path} is damaged ({type(exc).__name__}); delete {folder} "
            "to train from scratch"
        ) from None
    payload: dict[str, Any] = typing.cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
    version = payload.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"training state {path} has version {version!r}, expected {STATE_VERSION}; "
            f"delete {folder} to train from scratch"
        )
    return TrainingState(
        iter_num=int(payload["iter_num"]),
        best_val_loss=float(payload["best_val_loss"]),
        optimizer=payload["optimizer"],
        scaler=payload.get("scaler"),
        rng=_per_rank(payload.get("rng", {}), version),
        sampler=_per_rank(payload.get("sampler", {}), version),
        trainable=tuple(payload.get("trainable", ())),
    )


def _per_rank(saved: Mapping[str, Any], version: int) -> list[Mapping[str, Any]]:
    """The per-rank entries; a version-1 state is the one entry of a single process."""
    if version == 1:
        return [saved] if saved else []
    return list(saved.get("per_rank", []))


def for_sampling(out_dir: Path) -> Path | None:
    """The adapters sampling uses: best, else final, else last; None when there are none."""
    for name in SAMPLING_ORDER:
        folder = adapters_dir(out_dir, name)
        if folder.is_dir():
            return folder
    return None


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    """out_dir/tokenizer becomes a copy of `source` (sampling and export read it there)."""
    with atomic.atomic_directory(out_dir / TOKENIZER_DIR) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
