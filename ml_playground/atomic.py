"""Atomic writes: an artifact is either the old version or the complete new one.

Every file a user would be sad to lose (datasets, checkpoints, metadata, adapters) is
written to a temporary sibling and moved into place with `os.replace`, which is atomic
on POSIX and Windows when source and target share a directory. The folder is synced
after the rename, so the new name survives a power cut too. Temporary files are private
while they are written; what lands gets the permissions of a normally created file (the
user's umask), so a TensorBoard or Ollama service running as another user can read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

PROC_STATUS = Path("/proc/self/status")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Generator[IO[Any]]:
    """Open a temporary file next to `path`; on success move it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, mode) as handle:
                yield handle
                handle.flush()
                os.fchmod(handle.fileno(), 0o666 & ~current_umask())
                os.fsync(handle.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    sync_directory(path.parent)


@contextlib.contextmanager
def naming(path: Path) -> Generator[None]:
    """A failed write names `path`, the file the user knows.

    A full disk fails write() or fsync() with no file name at all, and a refused create
    names the temporary sibling, which is gone by the time the user reads the message.
    """
    try:
        yield
    except OSError as exc:
        named = exc.filename is not None and not Path(exc.filename).name.startswith(
            f".{path.name}."
        )
        if named or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(target: Path) -> Generator[Path]:
    """Yield a fresh staging directory; on success it replaces `target` as a whole.

    The previous `target` is kept until the new one is in place, so an interruption
    leaves either the old directory or the new one, never a half-written mix.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with naming(target):
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        )
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    staging.chmod(0o777 & ~current_umask())
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.replace(retired)
    staging.replace(target)
    sync_directory(target.parent)
    shutil.rmtree(retired, ignore_errors=True)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete what a write killed midway left in `folder`: temporary files and staging or
    retired folders (dot-names ending .tmp or .old). Only call it while no one else writes
    there (training holds out_dir's lock). Returns what it removed."""
    if not folder.is_dir():
        return []
    leftovers = [
        path
        for path in folder.iterdir()
        if path.name.startswith(".") and path.name.endswith((".tmp", ".old"))
    ]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it.

    os.umask can only read the mask by setting it; for that instant a file another thread
    creates (TensorBoard's writer, for one) would get no mask at all, so /proc is asked
    first and the set-and-restore is the fallback elsewhere.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in PROC_STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_directory(folder: Path) -> None:
    """fsync a folder, so a rename in it is on disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        # Some file systems refuse fsync on a folder; the rename has happened all the same.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
