"""The export folder as a unit: written whole or not at all, checksummed, stamped.

Everything is built in a staging folder next to `export_dir` and swapped in at the end
(`atomic.atomic_directory`), so an interrupted export leaves the previous bundle or the
new one, never a half-written one that looks complete; the next export removes what the
interrupted one left beside export_dir. Last into the staging folder go
`SHA256SUMS` and the inputs stamp: what the bundle was made from and the size of every
file. A re-run whose inputs match the stamp, with every file still in place, is skipped.

Bundles may nest: the Hugging Face folder defaults to `export/hf`, inside the GGUF
bundle's `export/`. A bundle replaced whole keeps the bundles nested in it (folders with
their own stamp): they are hard-linked into the staging folder before the swap, so at
every moment the old tree or the new one holds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

from ml_playground import atomic
from ml_playground.artifacts import Artifact, parse_artifact, write_artifact
from ml_playground.digest import folder_digests
from ml_playground.errors import ExportError

CHECKSUMS = "SHA256SUMS"
STAMP = "export-inputs.json"
STAMP_VERSION: Literal[1] = 1

JsonObject = Mapping[str, Any]


class ExportStamp(Artifact):
    """Stamp of an export: what the bundle was made from and the size of every file."""

    version: Literal[1]
    inputs: dict[str, Any]
    """Route-specific: the checkpoint or adapters (with digests) and every setting used."""
    files: dict[str, int]


def up_to_date(export_dir: Path, inputs: JsonObject) -> bool:
    """True when export_dir holds a complete bundle made from exactly these inputs.

    An export killed midway is finished or undone first: its complete bundle under a spare
    name moves into place, its staging folder goes (`atomic.recover`).
    """
    atomic.recover(export_dir)
    stamp = _read_stamp(export_dir)
    if stamp is None or stamp.inputs != _as_json(inputs) or not stamp.files:
        return False
    for name, size in stamp.files.items():
        path = export_dir / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


@contextlib.contextmanager
def staged(export_dir: Path, key: str = "[export.ollama] export_dir") -> Generator[Path]:
    """A staging folder that replaces export_dir when the block completes.

    Refuses an export_dir that holds files but no stamp: it is someone else's folder, and
    replacing it would delete them. Bundles nested in export_dir stay (module docstring).
    `key` is the config key that names export_dir, for the messages.
    """
    if export_dir.exists() and not export_dir.is_dir():
        raise ExportError(f"export_dir {export_dir} is a file; point {key} at a folder")
    if _holds_foreign_files(export_dir):
        raise ExportError(
            f"export_dir {export_dir} holds files that no export wrote (no {STAMP});"
            f" choose an empty or new folder for {key}"
        )
    _check_writable(export_dir, key)
    with atomic.atomic_directory(export_dir) as staging:
        yield staging
        _share(staging)
        _keep_nested_bundles(export_dir, staging)


def _nested_bundles(export_dir: Path) -> list[Path]:
    if not export_dir.is_dir():
        return []
    return [
        path
        for path in export_dir.iterdir()
        if path.is_dir() and (path / STAMP).is_file() and not _replacing(path)
    ]


def _replacing(path: Path) -> bool:
    """A nested bundle's own staging or retired copy (atomic_directory's dot-names)."""
    suffixes = (atomic.TEMP_SUFFIX, atomic.NEW_SUFFIX, atomic.OLD_SUFFIX)
    return path.name.startswith(".") and path.name.endswith(suffixes)


def _holds_foreign_files(export_dir: Path) -> bool:
    if not export_dir.is_dir() or _read_stamp(export_dir) is not None:
        return False
    ours = set(_nested_bundles(export_dir))
    return any(path not in ours and not _replacing(path) for path in export_dir.iterdir())


def _keep_nested_bundles(export_dir: Path, staging: Path) -> None:
    """Hard-link (else copy) every bundle nested in the old export_dir into `staging`,
    unless the new bundle wrote a folder of that name itself."""
    for nested in _nested_bundles(export_dir):
        if not (staging / nested.name).exists():
            shutil.copytree(nested, staging / nested.name, copy_function=_link_or_copy)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def seal(staging: Path, inputs: JsonObject) -> None:
    """Write SHA256SUMS over every file, then the stamp: the bundle is now complete."""
    lines = [f"{digest}  {name}" for name, digest in folder_digests(staging).items()]
    atomic.write_text(staging / CHECKSUMS, "\n".join(lines) + "\n")
    sizes = {
        path.relative_to(staging).as_posix(): path.stat().st_size
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    stamp = ExportStamp(version=STAMP_VERSION, inputs=_as_json(inputs), files=sizes)
    write_artifact(staging / STAMP, stamp)


def _read_stamp(export_dir: Path) -> ExportStamp | None:
    """The stamp, or None when there is none or it is not one this version can read: the
    bundle is then rebuilt (a stale stamp only costs an export)."""
    try:
        raw: object = json.loads((export_dir / STAMP).read_text(encoding="utf-8"))
        return parse_artifact(ExportStamp, raw, export_dir / STAMP, error=ExportError, remedy="")
    except (OSError, ValueError, ExportError):
        return None


def _as_json(inputs: JsonObject) -> dict[str, Any]:
    """The inputs as they read back from the stamp file, so the two compare equal."""
    return cast(dict[str, Any], json.loads(json.dumps(inputs, sort_keys=True)))


def _check_writable(export_dir: Path, key: str) -> None:
    """Fail now, in one line, rather than after minutes of conversion."""
    try:
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=export_dir.parent):
            pass
    except OSError as exc:
        raise ExportError(
            f"cannot write export_dir {export_dir}: {exc.strerror or exc}; set"
            f" {key} to a writable folder"
        ) from None


def _share(folder: Path) -> None:
    """Give the bundle the permissions of a normally created folder.

    Temporary files and folders are private (0600/0700); an export is meant to be read by
    others, e.g. an Ollama server running as its own user.
    """
    umask = atomic.current_umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
