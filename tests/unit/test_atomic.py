"""Atomic writes: all or nothing, and what lands is readable as the umask says."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_playground import atomic


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_022")
def test_a_written_file_gets_the_umask_permissions_not_the_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"

    atomic.write_json(path, {"a": 1})

    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


@pytest.mark.usefixtures("umask_022")
def test_a_replaced_folder_gets_the_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "adapters" / "last"

    with atomic.atomic_directory(target) as staging:
        (staging / "weights").write_bytes(b"x")

    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert (target / "weights").read_bytes() == b"x"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt_last.pt"
    path.write_bytes(b"old")

    with pytest.raises(RuntimeError), atomic.atomic_open(path) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")

    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_last.pt"]


def test_leftovers_of_a_killed_write_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / ".ckpt_last.pt.k2j3.tmp").write_bytes(b"half")
    (tmp_path / ".last.x8a.tmp").mkdir()
    (tmp_path / "best").mkdir()
    (tmp_path / ".best.old").mkdir()
    (tmp_path / ".best.new").mkdir()
    for kept in ("ckpt_last.pt", ".lock", "meta.json"):
        (tmp_path / kept).write_bytes(b"")

    removed = atomic.remove_leftovers(tmp_path)

    assert len(removed) == 4
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".lock",
        "best",
        "ckpt_last.pt",
        "meta.json",
    ]


def test_a_complete_copy_left_under_a_spare_name_is_moved_back_not_deleted(
    tmp_path: Path,
) -> None:
    # Killed between the two renames of the fallback: only the spare names hold the folders.
    for spare, content in ((".last.old", b"old"), (".last.new", b"new")):
        (tmp_path / spare).mkdir()
        (tmp_path / spare / "weights").write_bytes(content)
    (tmp_path / ".best.old").mkdir()

    atomic.remove_leftovers(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["best", "last"]
    assert (tmp_path / "last" / "weights").read_bytes() == b"new"


def test_a_write_error_without_a_file_name_names_the_file_being_written(tmp_path: Path) -> None:
    # A full disk fails write() with ENOSPC and no name; the user needs to know which file.
    path = tmp_path / "ckpt_last.pt"

    with (
        pytest.raises(OSError, match="No space left on device") as error,
        atomic.atomic_open(path) as handle,
    ):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []
