"""A prepared dataset folder (dataset_meta.py's layout), replaced crash-consistently.

Preparing (writer.py) writes every new file and folder beside the old ones under a staged
name (`.NAME.new`), so a prepare that fails or is killed while it reads and writes leaves
the old dataset exactly as it was. Once all of them are complete, the new meta.json is
staged too: that rename is the commit. Then the old meta.json goes (the folder reads as
"not prepared" while its files change), each staged file and folder is renamed over its
old one, and the new meta.json comes last, so a complete meta.json means complete files
(it lists their sizes). A kill after the commit is finished by the next prepare
(`recover` rolls the staged copies forward); a kill before it is undone (the staged copies
are deleted). Either way the next run finds the old complete dataset or the new one.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

from ml_playground import atomic
from ml_playground.artifacts import Artifact, write_artifact
from ml_playground.errors import DataError

META_FILE = "meta.json"
RERUN_HINT = "run `ml-playground prepare <experiment>`"
# An HF tokenizer, saved by the writer; training copies it into out_dir.
TOKENIZER_DIR: Final = "tokenizer"


class InputFile(Artifact):
    """An input as a fingerprint records it: by path, size and modification time rather
    than a content hash, because speech CSVs run to gigabytes and hashing them would cost
    a full extra read."""

    path: str
    size: int
    mtime_ns: int


def input_file(path: Path, *, what: str = "source") -> InputFile:
    """`path` as a fingerprint records it; a missing or unreadable one is an error that
    calls it `what`."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}; fix the path") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return InputFile(path=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)


class StagedDataset:
    """The new files and folders of a dataset being prepared, under their staged names
    until `commit` swaps them in. Obtained from `replacing`."""

    def __init__(self, dataset_dir: Path) -> None:
        self.dataset_dir = dataset_dir

    @contextmanager
    def open(self, name: str) -> Generator[IO[Any]]:
        """Write the new `name` (binary); it is staged complete when the block ends."""
        path = self.dataset_dir / name
        with atomic.naming(path), atomic.atomic_open(atomic.staged_name(path)) as handle:
            yield handle

    @contextmanager
    def folder(self, name: str) -> Generator[Path]:
        """Fill the new folder `name`; it is staged complete when the block ends."""
        with atomic.staged_directory(self.dataset_dir / name) as staging:
            yield staging

    def commit(self, meta: Artifact) -> None:
        """Stage meta.json (the commit), then swap everything in, meta.json last."""
        write_artifact(atomic.staged_name(self.dataset_dir / META_FILE), meta)
        _roll_forward(self.dataset_dir)


@contextmanager
def replacing(dataset_dir: Path) -> Generator[StagedDataset]:
    """Prepare a new version of dataset_dir: write it through the yielded `StagedDataset`
    and end with its `commit`; an error before the commit deletes what was staged."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    recover(dataset_dir)
    try:
        yield StagedDataset(dataset_dir)
    except BaseException:
        # After the commit the new dataset wins: what is left of the swap is the next
        # prepare's to finish, and nothing staged may go.
        if not atomic.staged_name(dataset_dir / META_FILE).exists():
            _roll_back(dataset_dir)
        raise


def recover(dataset_dir: Path) -> None:
    """Finish a prepare killed after its commit, or undo one killed before it."""
    if not dataset_dir.is_dir():
        return
    if atomic.staged_name(dataset_dir / META_FILE).exists():
        _roll_forward(dataset_dir)
    else:
        _roll_back(dataset_dir)


def _roll_forward(dataset_dir: Path) -> None:
    meta = dataset_dir / META_FILE
    with atomic.naming(meta):
        meta.unlink(missing_ok=True)
        atomic.sync_directory(dataset_dir)
        for staged, target in _staged(dataset_dir):
            if target != meta:
                atomic.promote(staged, target)
        atomic.sync_directory(dataset_dir)
        atomic.staged_name(meta).replace(meta)
        atomic.sync_directory(dataset_dir)
    atomic.remove_leftovers(dataset_dir)


def _roll_back(dataset_dir: Path) -> None:
    """Delete what an uncommitted prepare staged (there is no staged meta.json)."""
    for staged, _ in _staged(dataset_dir):
        if staged.is_dir():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            staged.unlink(missing_ok=True)
    atomic.remove_leftovers(dataset_dir)


def _staged(dataset_dir: Path) -> list[tuple[Path, Path]]:
    """(staged copy, the name it replaces) for every staged file and folder."""
    return [
        (path, dataset_dir / path.name[1:].removesuffix(atomic.NEW_SUFFIX))
        for path in sorted(dataset_dir.glob(f".?*{atomic.NEW_SUFFIX}"))
    ]
