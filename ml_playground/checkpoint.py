"""The one checkpoint store: what a training run leaves in out_dir, and how it is read back.

Both model backends save the same `TrainingState` (step, best validation loss, optimizer
and grad-scaler state, every rank's RNG and batch-sampler state), so a resumed run of
either kind replays exactly. What differs is where the weights go:

    from-scratch GPT                         Hugging Face + LoRA
    out_dir/ckpt_last.pt   (slot "last")     out_dir/adapters/last/    + training_state.pt
    out_dir/ckpt_best.pt   (slot "best")     out_dir/adapters/best/    + training_state.pt
    out_dir/ckpt.pt        (legacy, read)    out_dir/adapters/final/   + training_state.pt
    out_dir/meta.json      (dataset meta)    out_dir/meta.json         (RunMeta), tokenizer/

"last" is written at every evaluation and on Ctrl-C and is where training resumes; "best"
holds the lowest validation loss so far; "final" (adapters only) the weights at max_iters.
Sampling reads, in this order: GPT best, last, legacy ckpt.pt; adapters best, final, last.

A GPT checkpoint is one file, serialized in memory and moved into place; an adapters
folder is replaced as a whole (a staging folder moved into place), so an interruption
never leaves weights and state that disagree. Files hold only tensors and plain
containers and are read with `torch.load(weights_only=True)`: no pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from ml_playground import atomic
from ml_playground.artifacts import Artifact, parse_artifact, read_artifact, write_artifact
from ml_playground.data.dataset_folder import TOKENIZER_DIR
from ml_playground.data.records import RecordFormat
from ml_playground.data.tokenizer import TokenizerSpec, is_known_encoding
from ml_playground.errors import CheckpointError
from ml_playground.model.config import GPTConfig

Slot = Literal["last", "best", "final"]
LAST: Slot = "last"
BEST: Slot = "best"
FINAL: Slot = "final"

# The from-scratch GPT: one file per slot.
LAST_FILE = "ckpt_last.pt"
BEST_FILE = "ckpt_best.pt"
LEGACY_FILE = "ckpt.pt"
GPT_FILES: Mapping[Slot, str] = {LAST: LAST_FILE, BEST: BEST_FILE}
GPT_SAMPLING_ORDER = (BEST_FILE, LAST_FILE, LEGACY_FILE)
GPT_FORMAT_VERSION = 1
COMPILED_PREFIX = "_orig_mod."

# Hugging Face + LoRA: one folder per slot, peft's files plus the training state.
ADAPTERS_DIR = "adapters"
ADAPTER_SAMPLING_ORDER: tuple[Slot, ...] = (BEST, FINAL, LAST)
STATE_FILE = "training_state.pt"
INTEGRITY_FILE = "integrity.json"
LOCK_FILE = ".lock"
LOCK_GRACE_SECONDS = 10
DIGEST_KEY = "sha256"
CHANGED_SINCE_WRITTEN = "fails its integrity check: its contents changed after it was written"
MERGED_DIR = "merged"
RUN_META = "meta.json"
# Version 1 held one process's RNG and sampler state; version 2 holds one per rank.
STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)

StateDict = dict[str, Any]
TRAIN_AGAIN = "train first with `ml-playground train <experiment>`"
DAMAGED = "the file is damaged: delete it to start fresh or restore a backup"


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


# --- the from-scratch GPT -------------------------------------------------------------


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


def gpt_path(out_dir: Path, slot: Slot) -> Path:
    return out_dir / GPT_FILES[slot]


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
            f"checkpoint {path} has format_version {version!r}, expected {GPT_FORMAT_VERSION}"
        )
    required = ("model", "optimizer", "iter_num", "best_val_loss", "model_args", "tokenizer")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; {remedy}")
    expected = payload.pop(DIGEST_KEY, None)  # absent in checkpoints written before it
    if expected is not None and content_digest(payload) != expected:
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
        state=_training_state(payload, version=STATE_VERSION, source=path),
        model_args=GPTConfig.from_dict(payload["model_args"], source=f"{path} model_args"),
        config=payload.get("config", {}),
        tokenizer=tokenizer,
    )


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Generator[None]:
    """One training run per out_dir: out_dir/.lock holds the PID of the run writing it.

    A second run would keep overwriting the first one's checkpoints, so it is refused with
    the holder's PID. A lock whose process is gone (killed, machine restarted) is stale
    and taken over.
    """
    path = out_dir / LOCK_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(
            f"out_dir {out_dir} (or a folder above it) is a file; set train.runtime.out_dir "
            "to a folder"
        ) from None
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                raise CheckpointError(
                    f"{out_dir} is in use by another training run (pid {holder}, {path}); "
                    "wait for it or stop it, or set another train.runtime.out_dir"
                ) from None
            path.unlink(missing_ok=True)  # stale
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    # A save killed midway (kill -9, power cut) left its temporary file or folder behind.
    for folder in (out_dir, out_dir / ADAPTERS_DIR):
        atomic.remove_leftovers(folder)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def running_holder(out_dir: Path) -> int | None:
    """The PID of a training run writing out_dir now (-1: one starting), else None."""
    path = out_dir / LOCK_FILE
    return _lock_holder(path) if path.is_file() else None


def _lock_holder(path: Path) -> int | None:
    """The PID of the live process holding the lock at `path`; None if it is stale."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None  # released meanwhile
    if not text.isdigit():
        # Created but not yet written by a run starting right now, or garbage left behind.
        return -1 if age < LOCK_GRACE_SECONDS else None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


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


def gpt_for_sampling(out_dir: Path) -> Path:
    """The checkpoint sampling and export read: best, else last, else a legacy ckpt.pt."""
    for name in GPT_SAMPLING_ORDER:
        candidate = out_dir / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no checkpoint in {out_dir} (looked for {', '.join(GPT_SAMPLING_ORDER)}); {TRAIN_AGAIN}"
    )


# --- Hugging Face + LoRA ----------------------------------------------------------------


class RunMeta(RecordFormat):
    """Meta.json of a fine-tuning run: its base model, vocabulary, and its records' format."""

    kind: Literal["hf-finetune"] = "hf-finetune"
    base_model: str
    revision: str | None
    vocab_size: int
    lora: bool
    tokenizer: Literal["tokenizer"] = TOKENIZER_DIR

    @classmethod
    def read(cls, out_dir: Path) -> RunMeta:
        return read_artifact(cls, out_dir / RUN_META, error=CheckpointError, remedy=TRAIN_AGAIN)

    def write(self, out_dir: Path) -> None:
        write_artifact(out_dir / RUN_META, self)


def adapters_dir(out_dir: Path, slot: Slot) -> Path:
    return out_dir / ADAPTERS_DIR / slot


def save_adapters(
    out_dir: Path, slot: Slot, write_weights: Callable[[Path], None], state: TrainingState
) -> Path:
    """Replace out_dir/adapters/<slot> with the weights `write_weights` puts in a folder,
    and `state` beside them."""
    payload = {"version": STATE_VERSION, **_state_payload(state)}
    payload["trainable"] = list(state.trainable)
    data = _serialize(payload)
    target = adapters_dir(out_dir, slot)
    with atomic.atomic_directory(target) as staging:
        write_weights(staging)
        (staging / STATE_FILE).write_bytes(data)
        # Last in: the digest of every file, checked whenever the folder is read.
        files = sorted(path for path in staging.rglob("*") if path.is_file())
        digests = {path.relative_to(staging).as_posix(): file_digest(path) for path in files}
        write_artifact(staging / INTEGRITY_FILE, FolderDigests(files=digests))
    return target


def verify_adapters(folder: Path) -> None:
    """Every file of an adapters folder is as it was written; one error line if not.

    Folders written before the digests existed have none and pass unchecked.
    """
    manifest = folder / INTEGRITY_FILE
    if not manifest.is_file():
        return
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
    if version not in READABLE_STATE_VERSIONS:
        raise CheckpointError(
            f"training state {path} has version {version!r}, expected {STATE_VERSION}; {remedy}"
        )
    missing = [key for key in ("iter_num", "best_val_loss", "optimizer") if key not in payload]
    if missing:
        raise CheckpointError(f"training state {path} lacks {', '.join(missing)}; {remedy}")
    return _training_state(payload, version=cast(int, version), source=path)


def adapters_for_sampling(out_dir: Path) -> Path | None:
    """The adapters sampling uses: best, else final, else last; None when there are none."""
    for slot in ADAPTER_SAMPLING_ORDER:
        folder = adapters_dir(out_dir, slot)
        if folder.is_dir():
            return folder
    return None


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    """out_dir/tokenizer becomes a copy of `source` (sampling and export read it there)."""
    with atomic.atomic_directory(out_dir / TOKENIZER_DIR) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


# --- both -------------------------------------------------------------------------------


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


class FolderDigests(Artifact):
    """Integrity.json of an adapters folder: the SHA-256 of every file in it."""

    files: dict[str, str]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(tree: object) -> str:
    """SHA-256 of a checkpoint payload's contents: every tensor's dtype, shape and bytes,
    and every other value, in a fixed order of keys."""
    digest = hashlib.sha256()
    _feed(digest, tree)
    return digest.hexdigest()


def _feed(digest: Any, node: object) -> None:
    if isinstance(node, torch.Tensor):
        flat = node.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(node.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(node, Mapping):
        entries = cast(Mapping[object, object], node)
        digest.update(b"{")
        for key in sorted(entries, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, entries[key])
        digest.update(b"}")
    elif isinstance(node, list | tuple):
        digest.update(b"[")
        for item in cast(Sequence[object], node):
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(node).encode())


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


def _training_state(payload: Mapping[str, Any], *, version: int, source: Path) -> TrainingState:
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
        rng=_per_rank(payload.get("rng", {}), version),
        sampler=_per_rank(payload.get("sampler", {}), version),
        trainable=tuple(payload.get("trainable", ())),
    )


def _per_rank(saved: Mapping[str, Any], version: int) -> list[Mapping[str, Any]]:
    """The per-rank entries; a version-1 adapters state is the one entry of a process."""
    if version == 1:
        return [saved] if saved else []
    return list(saved.get("per_rank", []))
