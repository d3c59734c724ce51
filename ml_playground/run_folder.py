"""The run folder: every path under a training run's out_dir, named in this module alone.

    out_dir/
      ckpt_best.pt  ckpt_last.pt  [ckpt.pt]   the from-scratch GPT: one file per slot
      adapters/{best,last,final}/             Hugging Face + LoRA: one folder per slot
      tokenizer/                              a fine-tuning run's tokenizer, as trained
      merged/                                 its sampled adapters folded into the base
      meta.json                               what the run trained with, for sampling and export
      logs/tb/                                TensorBoard event files
      report.md  loss.png                     the report card
      samples/                                saved generations
      eval/val.json  eval/text/<stem>.json    what `eval` measured
      .lock                                   the PID of the training run writing out_dir

Both backends save into the same three slots: "best" holds the lowest validation loss so
far, "last" is written at every evaluation and on Ctrl-C and is where training resumes,
"final" holds the weights at max_iters. A GPT's "final" is its ckpt_last.pt: when the run
ends, the last checkpoint is the final one, and a third file would hold the same bytes.
Sampling and export read the first slot present in one order, best, final, last, and for
the GPT then the original design's ckpt.pt. This module imports no torch, so `list` and
the CLI can look at a run folder cheaply.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from ml_playground import atomic
from ml_playground.artifacts import read_artifact, write_artifact
from ml_playground.data.dataset_folder import TOKENIZER_DIR
from ml_playground.data.dataset_meta import RecordFormat
from ml_playground.errors import CheckpointError

Slot = Literal["best", "last", "final"]
BEST: Slot = "best"
LAST: Slot = "last"
FINAL: Slot = "final"
SAMPLING_ORDER: tuple[Slot, ...] = (BEST, FINAL, LAST)
END_SLOTS: tuple[Slot, ...] = (LAST, FINAL)
"""What the save at max_iters writes (every evaluation before it writes "last")."""

# The one slot table: where each backend keeps each slot, relative to out_dir.
ADAPTERS_DIR = "adapters"
BEST_FILE = "ckpt_best.pt"
LAST_FILE = "ckpt_last.pt"
GPT_FILES: Mapping[Slot, str] = {BEST: BEST_FILE, FINAL: LAST_FILE, LAST: LAST_FILE}
ADAPTER_DIRS: Mapping[Slot, str] = {slot: f"{ADAPTERS_DIR}/{slot}" for slot in SAMPLING_ORDER}
LEGACY_FILE = "ckpt.pt"  # the original design's one checkpoint; read for sampling only

RUN_META = "meta.json"
MERGED_DIR = "merged"
TB_DIR = "logs/tb"
REPORT_FILE = "report.md"
PLOT_FILE = "loss.png"
SAMPLES_DIR = "samples"
EVAL_DIR = "eval"
VAL_RESULT = "val.json"
TEXT_RESULTS = "text"
LOCK_FILE = ".lock"
LOCK_GRACE_SECONDS = 10
TRAIN_AGAIN = "train first with `ml-playground train <experiment>`"


def checkpoint_file(out_dir: Path, slot: Slot) -> Path:
    return out_dir / GPT_FILES[slot]


def checkpoint_files(out_dir: Path, slots: Sequence[Slot]) -> list[Path]:
    """The GPT files `slots` are kept in, in order, each once (final and last share one)."""
    return list(dict.fromkeys(checkpoint_file(out_dir, slot) for slot in slots))


def adapters_dir(out_dir: Path, slot: Slot) -> Path:
    return out_dir / ADAPTER_DIRS[slot]


def gpt_for_sampling(out_dir: Path) -> Path:
    """The checkpoint sampling and export read: the first of SAMPLING_ORDER, else ckpt.pt."""
    names = list(dict.fromkeys([*(GPT_FILES[slot] for slot in SAMPLING_ORDER), LEGACY_FILE]))
    for name in names:
        candidate = out_dir / name
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no checkpoint in {out_dir} (looked for {', '.join(names)}); {TRAIN_AGAIN}"
    )


def adapters_for_sampling(out_dir: Path) -> Path | None:
    """The adapters sampling uses, the first of SAMPLING_ORDER; None when there are none."""
    for slot in SAMPLING_ORDER:
        folder = adapters_dir(out_dir, slot)
        if folder.is_dir():
            return folder
    return None


def holds_weights(out_dir: Path) -> bool:
    """Whether a training run has saved weights in out_dir (what `list` calls "trained")."""
    names = {*GPT_FILES.values(), LEGACY_FILE}
    return any((out_dir / name).is_file() for name in names) or any(
        (out_dir / name).is_dir() for name in ADAPTER_DIRS.values()
    )


def adapters_root(out_dir: Path) -> Path:
    return out_dir / ADAPTERS_DIR


def tokenizer_dir(out_dir: Path) -> Path:
    return out_dir / TOKENIZER_DIR


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    """out_dir/tokenizer becomes a copy of `source` (sampling and export read it there)."""
    with atomic.atomic_directory(tokenizer_dir(out_dir)) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


def merged_dir(out_dir: Path) -> Path:
    return out_dir / MERGED_DIR


def meta_file(out_dir: Path) -> Path:
    return out_dir / RUN_META


def tensorboard_dir(out_dir: Path) -> Path:
    return out_dir / TB_DIR


def report_file(out_dir: Path) -> Path:
    return out_dir / REPORT_FILE


def plot_file(out_dir: Path) -> Path:
    return out_dir / PLOT_FILE


def samples_dir(out_dir: Path) -> Path:
    return out_dir / SAMPLES_DIR


def eval_result(out_dir: Path) -> Path:
    """Where `eval` keeps the val split's numbers."""
    return out_dir / EVAL_DIR / VAL_RESULT


def text_result(out_dir: Path, stem: str) -> Path:
    """Where `eval --text FILE` keeps FILE's numbers."""
    return out_dir / EVAL_DIR / TEXT_RESULTS / f"{stem}.json"


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
        return read_artifact(cls, meta_file(out_dir), error=CheckpointError, remedy=TRAIN_AGAIN)

    def write(self, out_dir: Path) -> None:
        write_artifact(meta_file(out_dir), self)


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
    for folder in (out_dir, adapters_root(out_dir)):
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
