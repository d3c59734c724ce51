"""SHA-256 digests that prove a saved file unchanged since it was written.

`file_digest` hashes a file's bytes (every whole-file SHA-256 of the package: adapters'
files, export checksums and stamps, eval's val split), `folder_digests` every file of a
folder; `content_digest`
hashes a checkpoint payload in memory (every tensor's dtype, shape and bytes, every other
value, keys in a fixed order), so the digest can travel inside the file it vouches for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

HASH_CHUNK = 1 << 20  # bytes read at a time: a multi-GB checkpoint never sits in memory


def file_digest(path: Path) -> str:
    """The SHA-256 hex digest of the file's bytes, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digests(folder: Path, leave_out: frozenset[str] = frozenset()) -> dict[str, str]:
    """`file_digest` of every file below `folder` (but those named in `leave_out`), by
    relative POSIX path, in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in leave_out)
    return {path.relative_to(folder).as_posix(): file_digest(path) for path in files}


def content_digest(tree: object) -> str:
    """SHA-256 of a checkpoint payload's contents: every tensor's dtype, shape and bytes,
    and every other value, in a fixed order of keys."""
    # Imported here: hashing a file (export, eval) needs no torch, which takes seconds.
    import torch  # noqa: PLC0415

    digest = hashlib.sha256()

    def feed(node: object) -> None:
        if isinstance(node, torch.Tensor):
            flat = node.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {flat.dtype} {tuple(node.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().data)
        elif isinstance(node, Mapping):
            entries = cast(Mapping[object, object], node)
            digest.update(b"{")
            for key in sorted(entries, key=repr):
                digest.update(repr(key).encode())
                feed(entries[key])
            digest.update(b"}")
        elif isinstance(node, list | tuple):
            digest.update(b"[")
            for item in cast(Sequence[object], node):
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(node).encode())

    feed(tree)
    return digest.hexdigest()
