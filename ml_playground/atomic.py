"""Atomic writes: an artifact is either the old version or the complete new one.

Every file a user would be sad to lose (datasets, checkpoints, metadata, adapters) is
written to a temporary sibling and moved into place with `os.replace`, which is atomic
on POSIX and Windows when source and target share a directory.
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


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Generator[IO[Any]]:
    """Open a temporary file next to `path`; on success move it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.replace(retired)
    staging.replace(target)
    shutil.rmtree(retired, ignore_errors=True)
