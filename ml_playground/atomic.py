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
import ctypes
import errno
import functools
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO, Any, cast

PROC_STATUS = Path("/proc/self/status")
TEMP_SUFFIX = ".tmp"  # being written: incomplete, always safe to delete
NEW_SUFFIX = ".new"  # a complete new copy waiting to be moved in
OLD_SUFFIX = ".old"  # the complete old copy of a folder, moved aside for the new one
RUST_OS_ERROR = re.compile(r"\(os error (?P<code>\d+)\)$")
AT_FDCWD = -100
RENAME_EXCHANGE = 2


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Generator[IO[Any]]:
    """Open a temporary file next to `path`; on success move it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
        )
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

    A full disk fails write() or fsync() with no file name at all, a library's short
    write (numpy's) raises an OSError with neither errno nor name, a Rust library's is no
    OSError at all, and a refused create names the temporary sibling (or a file in a
    staging folder), which is gone by the time the user reads the message. Each is raised
    again as an OSError naming `path`, or the file below it.
    """
    try:
        yield
    except OSError as exc:
        filename = None if exc.filename is None else _known_name(Path(exc.filename), path)
        if filename is not None and filename == exc.filename:
            raise
        message = exc.strerror if exc.errno is not None else str(exc.strerror or exc)
        raise OSError(exc.errno, message, filename or str(path)) from exc
    except Exception as exc:
        # Rust libraries (safetensors, tokenizers) raise their own exception type for a
        # failed write, with the OS error only in the text: "... (os error 28)".
        found = RUST_OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found["code"])
        raise OSError(code, os.strerror(code), str(path)) from exc


def _known_name(filename: Path, path: Path) -> str:
    """`filename` with a temporary sibling of `path` in it put back as `path`."""
    parts = filename.parts
    for index, part in enumerate(parts):
        if part.startswith(f".{path.name}."):
            return str(path.joinpath(*parts[index + 1 :]))
    return str(filename)


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

    Crash-consistent: a kill at any instant leaves the old complete folder or the new one
    under `target`'s own name, or, in the one window where neither is (the fallback
    below), both complete copies under names `recover` knows how to promote. The steps:

    1. write into `.NAME.<random>.tmp` (incomplete: always safe to delete);
    2. rename it to `.NAME.new`: from now on it is a complete copy;
    3. swap `.NAME.new` and `target` in one rename (Linux renameat2 RENAME_EXCHANGE), so
       `target` is never missing; where the OS or file system has no exchange, rename
       `target` to `.NAME.old`, then `.NAME.new` to `target`;
    4. delete what is left under the dot-names, now that `target` is complete.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    with staged_directory(target) as staging:
        yield staging
    complete = staged_name(target)
    with naming(target):
        if not (target.exists() and exchange(complete, target)):
            promote(complete, target)
    sync_directory(target.parent)
    _remove_copies(target)


@contextlib.contextmanager
def staged_directory(target: Path) -> Generator[Path]:
    """Steps 1 and 2 of `atomic_directory`: yield a fresh folder to fill, complete at
    `staged_name(target)` when the block ends, deleted when it fails."""
    with naming(target):
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        )
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.chmod(0o777 & ~current_umask())
        sync_directory(staging)
        staging.replace(staged_name(target))
        sync_directory(target.parent)


def staged_name(target: Path) -> Path:
    """Where a complete new copy of `target` waits to be swapped in."""
    return target.with_name(f".{target.name}{NEW_SUFFIX}")


def retired_name(target: Path) -> Path:
    """Where the old copy of a folder goes while the new one is moved in (no exchange)."""
    return target.with_name(f".{target.name}{OLD_SUFFIX}")


def promote(complete: Path, target: Path) -> None:
    """Move the complete copy `complete` to `target`, an existing folder going to its
    retired name first (a rename cannot replace a non-empty folder)."""
    if complete.is_dir() and target.is_dir():
        retired = retired_name(target)
        shutil.rmtree(retired, ignore_errors=True)
        target.replace(retired)
    complete.replace(target)


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic rename; False where this OS or file system cannot.

    Python has no binding for renameat2, so it is called through ctypes; glibc has had it
    since 2.28. Anything else (macOS, musl without it, a file system that refuses the
    flag) takes the two-rename fallback, which `recover` completes after a kill.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise OSError(code, os.strerror(code), str(second))
    return True


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


def recover(target: Path) -> list[Path]:
    """Finish an interrupted replacement of `target`, then delete its leftovers.

    Only when `target` is missing does a copy move: the complete new one (`.NAME.new`),
    else the retired old one (`.NAME.old`). Then, with a complete `target` in place,
    the other copies and the temporaries go. Call it only where no one else is replacing
    `target` (training holds out_dir's lock; prepare and export are one writer each).
    Returns what it removed.
    """
    if not target.exists():
        for copy in (staged_name(target), retired_name(target)):
            if copy.exists():
                copy.replace(target)
                sync_directory(target.parent)
                break
    if not target.exists():
        # Nothing complete to stand in: an incomplete temporary alone is all there is.
        return _remove(list(_temporaries(target)))
    return _remove_copies(target)


def _remove_copies(target: Path) -> list[Path]:
    copies = [path for path in (staged_name(target), retired_name(target)) if path.exists()]
    return _remove([*copies, *_temporaries(target)])


def _temporaries(target: Path) -> list[Path]:
    prefix = f".{target.name}."
    return [
        path
        for path in target.parent.glob(f"{glob.escape(prefix)}*{TEMP_SUFFIX}")
        if path.name.startswith(prefix)
    ]


def _remove(paths: list[Path]) -> list[Path]:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return paths


def remove_leftovers(folder: Path) -> list[Path]:
    """Recover every replacement a kill interrupted in `folder` (see `recover`), deleting
    its temporary files and spare copies (dot-names ending .tmp, .new or .old) once a
    complete copy stands in place. Only call it while no one else writes there (training
    holds out_dir's lock). Returns what it removed."""
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") and name.endswith((NEW_SUFFIX, OLD_SUFFIX)):
            removed += recover(folder / name[1:].rsplit(".", 1)[0])
    for path in folder.iterdir():
        if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
            removed += _remove([path])
    return removed


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
