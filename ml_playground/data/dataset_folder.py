"""A prepared dataset folder: what the token dataset and the records dataset share.

    dataset_dir/<files>       whatever the dataset holds (token files, or jsonl records)
    dataset_dir/meta.json     written last and atomically: a complete meta.json means
                              complete files, and it lists their sizes

Preparing removes a stale meta.json before it changes anything else, so a run that stops
half way leaves a folder that reads as "not prepared" rather than one whose meta.json
describes files that are no longer there. A folder is up to date when its meta.json
records the same fingerprint of inputs and settings and every file it lists still has
the recorded size; then preparing again does nothing.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Generator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

from ml_playground.artifacts import Artifact, read_artifact, write_artifact
from ml_playground.errors import DataError

META_FILE = "meta.json"
RERUN_HINT = "run `ml-playground prepare <experiment>`"
TOKENIZER_DIR: Final = "tokenizer"  # a records dataset's tokenizer, copied into out_dir by training


class PreparedMeta(Artifact):
    """A prepared dataset's meta.json."""

    @abstractmethod
    def file_sizes_expected(self) -> Mapping[str, int]:
        """The size in bytes of every file the meta.json vouches for, by name."""


M = TypeVar("M", bound=PreparedMeta)


@dataclass(frozen=True)
class PrepareOutcome(Generic[M]):
    """What preparing did: skipped an up-to-date folder, or wrote one; `message` says which."""

    skipped: bool
    meta: M
    message: str


def read_meta(kind: type[M], path: Path) -> M:
    """A dataset's meta.json; a missing or damaged one is an error that says to prepare."""
    return read_artifact(kind, path, error=DataError, remedy=RERUN_HINT)


_FORCED: ContextVar[bool] = ContextVar("prepare_forced", default=False)


@contextmanager
def forced(on: bool = True) -> Generator[None]:
    """Within this block no prepared folder counts as up to date (`prepare --force`)."""
    token = _FORCED.set(on)
    try:
        yield
    finally:
        _FORCED.reset(token)


def up_to_date(
    kind: type[M], dataset_dir: Path, same_inputs: Callable[[M], bool]
) -> PrepareOutcome[M] | None:
    """The skipped outcome when dataset_dir's meta.json passes `same_inputs` and every file
    it lists is intact; None when the folder must be prepared (again)."""
    path = dataset_dir / META_FILE
    if _FORCED.get() or not path.is_file():
        return None
    try:
        meta = read_meta(kind, path)
    except DataError:
        return None  # a damaged meta.json is rebuilt by preparing again
    if not same_inputs(meta):
        return None
    for name, size in meta.file_sizes_expected().items():
        file = dataset_dir / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return PrepareOutcome(
        skipped=True,
        meta=meta,
        message=(
            f"dataset up to date: {dataset_dir} (skipped; delete it or change inputs or "
            "[prepare] settings to prepare again)"
        ),
    )


def remove_meta(dataset_dir: Path) -> None:
    """Before anything in dataset_dir changes: its files stop being vouched for."""
    (dataset_dir / META_FILE).unlink(missing_ok=True)


def write_meta(dataset_dir: Path, meta: PreparedMeta) -> None:
    """Last: the files are complete, so meta.json may say so."""
    write_artifact(dataset_dir / META_FILE, meta)
