"""The run folder: every path under a training run's out_dir, named in this module alone.

    out_dir/
      ckpt_best.pt  ckpt_last.pt  [ckpt.pt]   the from-scratch GPT: one file per slot
      adapters/{best,last,final}/             Hugging Face + LoRA: one folder per slot
      tokenizer/                              a fine-tuning run's tokenizer, as trained
      merged/                                 its sampled adapters folded into the base
      meta.json                               what the run trained with (RunMeta: `kind` gpt or
                                              hf-finetune), for sampling, eval and export
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
the GPT then the original design's ckpt.pt. Every path here is a name, and no function
loads weights, so `list` can look at a run folder without reading its checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from ml_playground import atomic
from ml_playground.artifacts import Artifact, parse_artifact, read_json_object, write_artifact
from ml_playground.config import HFModelConfig
from ml_playground.data.dataset_folder import TOKENIZER_DIR
from ml_playground.data.dataset_meta import RecordFormat
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.errors import CheckpointError, ConfigError, UserError

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
START_OVER = "start over with `ml-playground train --fresh <experiment>`, or restore a backup"
RUN_META_VERSION: Literal[1] = 1


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


class GPTRunMeta(Artifact):
    """Meta.json of a from-scratch GPT run: its tokenizer, vocabulary and dataset."""

    kind: Literal["gpt"] = "gpt"
    format_version: Literal[1] = RUN_META_VERSION
    tokenizer: TokenizerSpec
    vocab_size: int  # the tokenizer's; train.model.vocab_size may pad the model's above it
    dataset_dir: str  # the prepared dataset the run trained on
    dataset_sha256: str  # of that dataset's meta.json, which fingerprints sources and settings

    def describe_tokenizer(self) -> str:
        return self.tokenizer.describe()


class HFRunMeta(RecordFormat):
    """Meta.json of a fine-tuning run: its base model, vocabulary, and its records' format."""

    kind: Literal["hf-finetune"] = "hf-finetune"
    format_version: Literal[1] = RUN_META_VERSION
    base_model: str
    revision: str | None
    vocab_size: int
    lora: bool
    tokenizer: Literal["tokenizer"] = TOKENIZER_DIR

    def describe_tokenizer(self) -> str:
        return f"{self.base_model} (vocab {self.vocab_size})"

    def check_base(self, out_dir: Path, hf: HFModelConfig, error: type[UserError]) -> None:
        """Adapters on another base than they were trained on would be garbage."""
        if (self.base_model, self.revision) != (hf.model_name, hf.revision):
            raise error(
                f"the adapters in {out_dir} were trained on {self.base_model} but"
                f" train.hf_model.model_name is {hf.model_name}; fix the config or use another"
                " out_dir"
            )


RunMeta = GPTRunMeta | HFRunMeta
"""out_dir/meta.json, one schema for both backends: `kind` says which layout follows."""

M = TypeVar("M", GPTRunMeta, HFRunMeta)
_KINDS: Mapping[str, type[GPTRunMeta] | type[HFRunMeta]] = {
    "gpt": GPTRunMeta,
    "hf-finetune": HFRunMeta,
}
_WHAT: Mapping[str, str] = {"gpt": "a from-scratch GPT", "hf-finetune": "a fine-tuning"}


def read_run_meta(out_dir: Path) -> RunMeta | None:
    """out_dir/meta.json of either kind; None before a training run has written it.

    A meta.json without a known `kind` comes from an older format (a GPT run's copy of
    its dataset's meta): refused in one line, since formats are frozen until 1.0.
    """
    path = meta_file(out_dir)
    if not path.is_file():
        return None
    obj = read_json_object(path, what="run meta", error=CheckpointError, remedy=START_OVER)
    kind = obj.get("kind")
    schema = _KINDS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise CheckpointError(
            f"{path} is a run meta.json of another format (kind {kind!r}, expected one of "
            f"{', '.join(_KINDS)}); {START_OVER}"
        )
    return parse_artifact(schema, obj, path, error=CheckpointError, remedy=START_OVER)


def read_run_meta_of(out_dir: Path, schema: type[M]) -> M | None:
    """out_dir/meta.json when it describes a run of `schema`'s kind; None when absent."""
    meta = read_run_meta(out_dir)
    if meta is None or isinstance(meta, schema):
        return meta
    wanted = schema.model_fields["kind"].default
    raise CheckpointError(
        f"{meta_file(out_dir)} describes {_WHAT[meta.kind]} run, but the config's run is "
        f"{_WHAT[wanted]} one; point train.runtime.out_dir at another folder or {START_OVER}"
    )


def write_run_meta(out_dir: Path, meta: RunMeta) -> None:
    write_artifact(meta_file(out_dir), meta)


def set_aside(out_dir: Path) -> Path | None:
    """`train --fresh`: rename out_dir to the first free out_dir.N; never delete a run.

    None when there is no out_dir yet. One process renames; ranks would race on the rename.
    """
    from ml_playground.distributed import ranks_from_env  # noqa: PLC0415 - imports torch

    if ranks_from_env().is_distributed:
        raise ConfigError(
            f"--fresh renames {out_dir} in one process; run without torchrun/accelerate "
            "once, or move the folder yourself, then start the distributed run"
        )
    if not out_dir.exists():
        return None
    holder = running_holder(out_dir)
    if holder is not None:
        # Moving it would pull the folder from under a run that keeps writing by its path.
        raise ConfigError(
            f"--fresh: {out_dir} is in use by a training run (pid {holder}); wait for it or "
            "stop it, then run again"
        )
    number = 1
    while out_dir.with_name(f"{out_dir.name}.{number}").exists():
        number += 1
    target = out_dir.with_name(f"{out_dir.name}.{number}")
    out_dir.rename(target)  # one rename on one file system: the run moves whole or not at all
    return target


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
