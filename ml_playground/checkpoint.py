"""The one checkpoint store: the weights and training state a run saves, and reading them back.

Both model backends save the same `TrainingState` (step, best validation loss, optimizer
and grad-scaler state, every rank's RNG and batch-sampler state), so a resumed run of
either kind replays exactly. Where each slot lives is run_folder.py's table: a GPT
checkpoint is one file (ckpt_best.pt, ckpt_last.pt), serialized in memory and moved into
place; an adapters folder (adapters/{best,last,final}) holds peft's files, the training
state and integrity.json, and is replaced as a whole, so an interruption never leaves
weights and state that disagree. Files hold only tensors and plain containers and are
read with `torch.load(weights_only=True)`: no pickle.

Until 1.0 the formats are frozen at one version each (DEVELOPMENT.md): a GPT file carries
`format_version` and a digest of its contents, an adapters folder a `version`ed training
state and the digest of every file. A file of another version is refused in one line.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ml_playground import atomic, run_folder
from ml_playground.artifacts import Artifact, parse_artifact, read_artifact, write_artifact
from ml_playground.data.tokenizer import TokenizerSpec, is_known_encoding
from ml_playground.digest import content_digest, file_digest, folder_digests
from ml_playground.errors import CheckpointError
from ml_playground.model.config import GPTConfig
from ml_playground.run_folder import START_OVER, TRAIN_AGAIN, Slot, adapters_dir

GPT_FORMAT_VERSION = 1
STATE_FORMAT_VERSION = 2  # training_state.pt's "version": one RNG and sampler state per rank
COMPILED_PREFIX = "_orig_mod."
STATE_FILE = "training_state.pt"
INTEGRITY_FILE = "integrity.json"
DIGEST_KEY = "sha256"
CHANGED_SINCE_WRITTEN = "fails its integrity check: its contents changed after it was written"
DAMAGED = "the file is damaged: delete it to start fresh or restore a backup"

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
    trainable: tuple[str, ...] = ()  # parameter names in optimizer order (adapters only)


@dataclass(frozen=True)
class Checkpoint:
    """A GPT checkpoint: weights, training state, model arguments, config and tokenizer."""

    model: Mapping[str, torch.Tensor]
    state: TrainingState
    model_args: GPTConfig
    config: Mapping[str, Any]  # the effective config, for the record; nothing reads it back
    tokenizer: TokenizerSpec

    def payload(self) -> dict[str, Any]:
        """What the file holds: tensors and plain containers only."""
        return {
            "format_version": GPT_FORMAT_VERSION,
            "model": strip_compile_prefix(self.model),
            "model_args": self.model_args.to_dict(),
            "config": dict(self.config),
            "tokenizer": self.tokenizer.to_json(),
            **_state_payload(self.state),
        }


def strip_compile_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.compile wraps the module and prefixes every key; checkpoints never carry it."""
    return {key.removeprefix(COMPILED_PREFIX): value for key, value in state.items()}


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Serialize in memory, then write atomically: a crash never leaves half a checkpoint.

    The payload carries a SHA-256 of its own contents: torch's zip reader checks no CRCs,
    so without it a flipped bit in a tensor would load and train on silently.
    """
    payload = checkpoint.payload()
    payload[DIGEST_KEY] = content_digest(payload)
    atomic.write_bytes(path, _serialize(payload))


def load(path: Path) -> Checkpoint:
    """Read and validate a GPT checkpoint; any damage is an error naming the file."""
    remedy = "delete it to start fresh or restore a backup"
    payload = _read_pt(
        path, f"checkpoint {path} is corrupt or not an ml-playground checkpoint", remedy
    )
    version = payload.get("format_version")
    if version != GPT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {version!r}, expected {GPT_FORMAT_VERSION}; "
            f"{START_OVER}"
        )
    expected = payload.pop(DIGEST_KEY, None)
    if expected is None:
        raise CheckpointError(
            f"checkpoint {path} holds no {DIGEST_KEY} digest, which every format_version "
            f"{GPT_FORMAT_VERSION} file has; {START_OVER}"
        )
    required = ("model", "optimizer", "iter_num", "best_val_loss", "model_args", "tokenizer")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; {remedy}")
    if content_digest(payload) != expected:
        raise CheckpointError(f"checkpoint {path} {CHANGED_SINCE_WRITTEN}; {remedy}")
    tokenizer = parse_artifact(
        TokenizerSpec, payload["tokenizer"], path, error=CheckpointError, remedy=remedy
    )
    if tokenizer.encoding is not None and not is_known_encoding(tokenizer.encoding):
        raise CheckpointError(
            f"checkpoint {path} was written with tiktoken encoding {tokenizer.encoding!r}, which "
            "this tiktoken does not have; install the tiktoken version that trained it, or "
            f"{remedy}"
        )
    return Checkpoint(
        model=strip_compile_prefix(payload["model"]),
        state=_training_state(payload, source=path),
        model_args=GPTConfig.from_dict(payload["model_args"], source=f"{path} model_args"),
        config=payload.get("config", {}),
        tokenizer=tokenizer,
    )


def load_trained(out_dir: Path, path: Path) -> Checkpoint:
    """Checkpoint `path` of the GPT run in out_dir, as resume, sampling and export read it:
    after the run's meta.json (an older format is refused before any weights load), whose
    tokenizer must be the checkpoint's; without one (ckpt.pt), the checkpoint alone."""
    meta = run_folder.read_run_meta_of(out_dir, run_folder.GPTRunMeta)
    ckpt = load(path)
    if meta is not None and meta.tokenizer != ckpt.tokenizer:
        raise CheckpointError(
            f"checkpoint {path} was trained with tokenizer {ckpt.tokenizer.describe()} but "
            f"{run_folder.meta_file(out_dir)} says {meta.tokenizer.describe()}; {START_OVER}"
        )
    return ckpt


def load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    """Put a checkpoint's weights into the model its model_args describe; tensors that do
    not fit (a missing key, another shape) mean the file is damaged, said in one line."""
    try:
        module.load_state_dict(dict(weights))
    except RuntimeError as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = details[0] if details else str(exc)
        raise CheckpointError(
            f"checkpoint {source} holds weights that do not fit its model_args "
            f"({first[:160]}); {DAMAGED}"
        ) from None


def save_adapters(
    out_dir: Path, slot: Slot, write_weights: Callable[[Path], None], state: TrainingState
) -> Path:
    """Replace out_dir/adapters/<slot> with the weights `write_weights` puts in a folder,
    and `state` beside them."""
    payload = {"version": STATE_FORMAT_VERSION, **_state_payload(state)}
    payload["trainable"] = list(state.trainable)
    data = _serialize(payload)
    target = adapters_dir(out_dir, slot)
    with atomic.atomic_directory(target) as staging:
        write_weights(staging)
        (staging / STATE_FILE).write_bytes(data)
        seal_adapters(staging)  # last in
    return target


def seal_adapters(folder: Path) -> None:
    """Write integrity.json: the digest of every other file, checked whenever it is read."""
    digests = folder_digests(folder, leave_out=frozenset({INTEGRITY_FILE}))
    write_artifact(folder / INTEGRITY_FILE, FolderDigests(files=digests))


def verify_adapters(folder: Path) -> None:
    """Every file of an adapters folder is as it was written; one error line if not."""
    manifest = folder / INTEGRITY_FILE
    if not manifest.is_file():
        raise CheckpointError(
            f"adapters {folder} hold no {INTEGRITY_FILE}, which every adapters folder of this "
            f"format has; {START_OVER}"
        )
    remedy = f"restore a backup or delete {folder}"
    digests = read_artifact(FolderDigests, manifest, error=CheckpointError, remedy=remedy)
    for name, expected in digests.files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the adapters; {remedy}")
        if file_digest(path) != expected:
            raise CheckpointError(f"{path} {CHANGED_SINCE_WRITTEN}; {remedy}")


def resumable_state(folder: Path) -> TrainingState | None:
    """The state to resume from `folder` (adapters/last); None when no run has written it.

    A folder without its state is not "no run yet": starting fresh would overwrite the
    adapters of the run that wrote it, so that is an error.
    """
    if not folder.exists():
        return None
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(
            f"{folder} holds no {STATE_FILE}, so training cannot resume from it; restore the "
            f"file, or move {folder.parent} away to train from scratch"
        )
    verify_adapters(folder)
    return load_state(folder)


def load_state(folder: Path) -> TrainingState:
    """The training state saved next to adapters; damage is an error naming the folder."""
    path = folder / STATE_FILE
    remedy = f"delete {folder} to train from scratch"
    payload = _read_pt(path, f"training state {path} is damaged", remedy)
    version = payload.get("version")
    if version != STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"training state {path} has version {version!r}, expected {STATE_FORMAT_VERSION}; "
            f"{START_OVER}"
        )
    missing = [key for key in ("iter_num", "best_val_loss", "optimizer") if key not in payload]
    if missing:
        raise CheckpointError(f"training state {path} lacks {', '.join(missing)}; {remedy}")
    return _training_state(payload, source=path)


class FolderDigests(Artifact):
    """Integrity.json of an adapters folder: the SHA-256 of every file in it."""

    files: dict[str, str]


def _state_payload(state: TrainingState) -> dict[str, Any]:
    return {
        "iter_num": state.iter_num,
        "best_val_loss": state.best_val_loss,
        "optimizer": state.optimizer,
        "scaler": state.scaler,
        "rng": {"per_rank": [dict(entry) for entry in state.rng]},
        "sampler": {"per_rank": [dict(entry) for entry in state.sampler]},
    }


def _serialize(payload: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    return buffer.getvalue()


def _read_pt(path: Path, damaged: str, remedy: str) -> dict[str, Any]:
    try:
        raw: object = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; {TRAIN_AGAIN}") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{damaged} ({type(exc).__name__}); {remedy}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{damaged} (not a dictionary); {remedy}")
    return cast(dict[str, Any], raw)


def _training_state(payload: Mapping[str, Any], *, source: Path) -> TrainingState:
    iter_num, best, optimizer = payload["iter_num"], payload["best_val_loss"], payload["optimizer"]
    if isinstance(iter_num, bool) or not isinstance(iter_num, int) or iter_num < 0:
        raise CheckpointError(f"{source} has iter_num {iter_num!r}, not a step; {DAMAGED}")
    if isinstance(best, bool) or not isinstance(best, int | float):
        raise CheckpointError(f"{source} has best_val_loss {best!r}, not a number; {DAMAGED}")
    if not isinstance(optimizer, dict):
        raise CheckpointError(f"{source} holds no optimizer state; {DAMAGED}")
    return TrainingState(
        iter_num=iter_num,
        best_val_loss=float(best),
        optimizer=cast(StateDict, optimizer),
        scaler=payload.get("scaler"),
        rng=list(payload.get("rng", {}).get("per_rank", [])),
        sampler=list(payload.get("sampler", {}).get("per_rank", [])),
        trainable=tuple(payload.get("trainable", ())),
    )
