"""Every file and folder the project replaces survives a kill at any step of the write.

For each writer (a checkpoint file, a folder with and without the kernel's rename-exchange,
the adapters slot a run resumes from, a prepared dataset with its tokenizer folder, an
export bundle) the writer runs in a forked child that dies with `os._exit` (no cleanup, as
under kill -9) at its k-th step: a rename, a delete, or the fsync that completes a write.
k goes from the first step until the writer finishes. After every kill the parent does
what the next run does (recover, then read) and checks that the complete old copy or the
complete new one stands under the real name, and that nothing the kill left is in the way.
A second pass raises a full disk at each step instead, which must leave the old copy.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ml_playground import atomic, checkpoint, run_folder
from ml_playground.artifacts import Artifact
from ml_playground.data import dataset_folder
from ml_playground.data.corpus import prepare_token_dataset
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.export import bundle

EXIT_KILLED = 137
MAX_STEPS = 200  # far more than any writer here takes; a loop that never ends fails instead

Snapshot = dict[str, bytes]


def snapshot(folder: Path) -> Snapshot:
    """Every file below `folder` by relative path, with its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class Faults:
    """Counts this process's renames, deletes and fsyncs (the fsync completes a write);
    the `step`-th one calls `fault` instead of happening."""

    NAMES = ("replace", "rename", "unlink", "rmdir", "fsync")

    def __init__(self, step: int, fault: Callable[[], None]) -> None:
        self.step = step
        self.fault = fault
        self.count = 0
        self.saved: dict[str, Callable[..., object]] = {}

    @property
    def reached(self) -> bool:
        return self.count >= self.step

    def install(self) -> None:
        self.saved = {name: getattr(os, name) for name in self.NAMES}
        for name, real in self.saved.items():
            setattr(os, name, self._counted(real))
        self.saved_exchange = atomic.exchange
        atomic.exchange = self._counted(atomic.exchange)  # type: ignore[assignment] # the fault

    def remove(self) -> None:
        for name, real in self.saved.items():
            setattr(os, name, real)
        atomic.exchange = self.saved_exchange

    def _counted(self, real: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            self.count += 1
            if self.count == self.step:
                self.fault()
            return real(*args, **kwargs)

        return wrapper


def die() -> None:
    os._exit(EXIT_KILLED)


def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def killed_at(step: int, write: Callable[[], None]) -> bool:
    """Run `write` in a forked child killed at `step`; True if it died, False if it ended."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            Faults(step, die).install()
            write()
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, EXIT_KILLED), f"the writer failed at step {step} (exit {code})"
    return code == EXIT_KILLED


def failed_at(step: int, write: Callable[[], None]) -> bool | None:
    """Run `write` with a full disk at `step`: True if it raised, False if the fault was
    swallowed (a folder fsync is best effort), None once the writer has fewer steps."""
    faults = Faults(step, disk_full)
    faults.install()
    try:
        write()
    except OSError:
        return True
    finally:
        faults.remove()
    return False if faults.reached else None


def every_kill(write: Callable[[], None], reset: Callable[[], None]) -> Iterator[int]:
    """Each step at which `write` was killed, after the state is checked by the caller;
    `reset` restores the old copy before the next step."""
    for step in range(1, MAX_STEPS):
        reset()
        if not killed_at(step, write):
            return
        yield step
    pytest.fail(f"the writer still had steps left after {MAX_STEPS}")


def no_exchange(first: Path, second: Path) -> bool:
    """An OS or file system without renameat2(RENAME_EXCHANGE): the two-rename fallback."""
    del first, second
    return False


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# --- a file --------------------------------------------------------------------------------


def test_a_kill_at_any_step_of_a_file_write_leaves_the_old_or_the_new_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / run_folder.LAST_FILE
    old, new = b"old checkpoint" * 100, b"new checkpoint" * 200

    def reset() -> None:
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        path.write_bytes(old)

    kills = 0
    for _ in every_kill(lambda: atomic.write_bytes(path, new), reset):
        atomic.remove_leftovers(tmp_path)
        assert path.read_bytes() in (old, new)
        assert leftovers(tmp_path) == []
        kills += 1
    assert kills >= 2  # the fsync and the rename at least


# --- a folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_kill_at_any_step_of_a_folder_replacement_leaves_a_complete_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "exchange", no_exchange)
    elif not _exchange_works(tmp_path):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this OS or file system")
    parent = tmp_path / "adapters"
    target = parent / "best"
    old = {"adapter_model.safetensors": b"old weights", "training_state.pt": b"old state"}
    new = {"adapter_model.safetensors": b"new weights!", "adapter_config.json": b"{}"}

    def reset() -> None:
        shutil.rmtree(parent, ignore_errors=True)
        target.mkdir(parents=True)
        for name, data in old.items():
            (target / name).write_bytes(data)

    def write() -> None:
        with atomic.atomic_directory(target) as staging:
            for name, data in new.items():
                atomic.write_bytes(staging / name, data)

    kills: list[bool] = []
    for step in every_kill(write, reset):
        atomic.remove_leftovers(parent)
        assert snapshot(target) in (old, new), f"killed at step {step}"
        assert leftovers(parent) == []
        kills.append(snapshot(target) == new)
    assert False in kills and True in kills  # some kills kept the old, later ones the new


def _exchange_works(tmp_path: Path) -> bool:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    try:
        return atomic.exchange(first, second)
    finally:
        shutil.rmtree(first)
        shutil.rmtree(second)


def test_a_kill_while_the_adapters_slot_is_replaced_never_makes_the_next_run_start_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback is the case the exchange avoids: the slot is missing under its real name.
    monkeypatch.setattr(atomic, "exchange", no_exchange)
    out_dir = tmp_path / "out"

    def state(step: int) -> checkpoint.TrainingState:
        return checkpoint.TrainingState(
            iter_num=step, best_val_loss=1.0 / step, optimizer={}, scaler=None, rng=[], sampler=[]
        )

    def weights(tag: bytes) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            (folder / "adapter_model.safetensors").write_bytes(tag * 64)

        return write

    def reset() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        checkpoint.save_adapters(out_dir, run_folder.LAST, weights(b"a"), state(10))

    def write() -> None:
        checkpoint.save_adapters(out_dir, run_folder.LAST, weights(b"b"), state(20))

    resumed_steps: set[int] = set()
    for _ in every_kill(write, reset):
        with run_folder.out_dir_lock(out_dir):  # what the next `train` does first
            resumed = checkpoint.resumable_state(run_folder.adapters_dir(out_dir, run_folder.LAST))
        assert resumed is not None
        resumed_steps.add(resumed.iter_num)
        assert leftovers(out_dir / run_folder.ADAPTERS_DIR) == []
    assert resumed_steps == {10, 20}


# --- a prepared dataset --------------------------------------------------------------------


class NotesMeta(Artifact):
    """Notes dataset metadata."""

    version: int
    sizes: dict[str, int]


def write_notes(dataset_dir: Path, version: int) -> None:
    """A dataset as the records preparers write one: two split files, a tokenizer folder
    and meta.json, all through the one dataset writer."""
    sizes: dict[str, int] = {}
    with dataset_folder.replacing(dataset_dir) as staged:
        for name in ("train.jsonl", "val.jsonl"):
            with staged.open(name) as handle:
                sizes[name] = handle.write(f"{name} version {version}\n".encode() * version)
        with staged.folder("tokenizer") as folder:
            (folder / "tokenizer.json").write_text(f"v{version}", encoding="utf-8")
            (folder / f"added_{version}.json").write_text("{}", encoding="utf-8")
        staged.commit(NotesMeta(version=version, sizes=sizes))


@pytest.mark.parametrize("fault", ["kill", "full disk"])
def test_a_prepare_stopped_at_any_step_leaves_the_old_or_the_new_dataset_whole(
    tmp_path: Path, fault: str
) -> None:
    dataset_dir = tmp_path / "dataset"
    write_notes(dataset_dir, 1)
    old = snapshot(dataset_dir)
    write_notes(dataset_dir, 2)
    new = snapshot(dataset_dir)

    def reset() -> None:
        shutil.rmtree(dataset_dir)
        write_notes(dataset_dir, 1)

    def recovered() -> Snapshot:
        dataset_folder.recover(dataset_dir)  # what the next prepare does first
        assert leftovers(dataset_dir) == []
        return snapshot(dataset_dir)

    outcomes: list[Snapshot] = []
    if fault == "kill":
        for step in every_kill(lambda: write_notes(dataset_dir, 2), reset):
            outcomes.append(recovered())
            assert outcomes[-1] in (old, new), f"killed at step {step}"
    else:
        for step in range(1, MAX_STEPS):
            reset()
            failed = failed_at(step, lambda: write_notes(dataset_dir, 2))
            if failed is None:
                break
            if failed:
                # Before the commit the old dataset is untouched; after it, only renames
                # are left, which the next prepare finishes.
                outcomes.append(recovered())
                assert outcomes[-1] in (old, new), f"failed at step {step}"
    assert old in outcomes and new in outcomes


def test_a_kill_at_any_step_of_a_token_prepare_keeps_a_dataset_that_trains(
    tmp_path: Path,
) -> None:
    dataset_dir = tmp_path / "dataset"
    corpus = tmp_path / "input.txt"
    old_text, new_text = "to be or not to be\n" * 40, "that is the question\n" * 60

    def write_corpus(text: str) -> None:
        # meta.json records the corpus's size and mtime: the same text, the same meta.json.
        corpus.write_text(text, encoding="utf-8")
        os.utime(corpus, ns=(len(text), len(text)))

    def prepare(text: str) -> None:
        write_corpus(text)
        prepare_token_dataset(
            [corpus], dataset_dir, tokenizer_kind="char", show_progress=False, chunk_bytes=256
        )

    prepare(old_text)
    old = snapshot(dataset_dir)
    prepare(new_text)
    new = snapshot(dataset_dir)

    def reset() -> None:
        shutil.rmtree(dataset_dir)
        prepare(old_text)
        write_corpus(new_text)

    def write() -> None:
        prepare_token_dataset(
            [corpus], dataset_dir, tokenizer_kind="char", show_progress=False, chunk_bytes=256
        )

    seen: list[bool] = []
    for step in every_kill(write, reset):
        dataset_folder.recover(dataset_dir)
        assert snapshot(dataset_dir) in (old, new), f"killed at step {step}"
        seen.append(snapshot(dataset_dir) == new)
        assert (dataset_dir / META_FILE).is_file()
    assert seen and not all(seen) and any(seen)


# --- an export bundle ----------------------------------------------------------------------


def test_a_kill_at_any_step_of_an_export_leaves_a_complete_bundle_and_no_staging_folder(
    tmp_path: Path,
) -> None:
    export_dir = tmp_path / "export"

    def export(version: int) -> None:
        with bundle.staged(export_dir) as staging:
            (staging / "model.gguf").write_bytes(b"GGUF" * (100 * version))
            (staging / "Modelfile").write_text(f"FROM ./model.gguf # {version}\n", "utf-8")
            bundle.seal(staging, {"version": version})

    def reset() -> None:
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        export(1)

    complete: list[int] = []
    for step in every_kill(lambda: export(2), reset):
        versions = [v for v in (1, 2) if bundle.up_to_date(export_dir, {"version": v})]
        assert len(versions) == 1, f"killed at step {step}"
        assert leftovers(tmp_path) == []  # the next export's check removed the staging
        complete += versions
    assert set(complete) == {1, 2}
