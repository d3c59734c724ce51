"""SHA-256 digests that prove a saved file unchanged since it was written.

`file_digest` hashes a file's bytes; `content_digest` hashes a checkpoint payload in memory
(every tensor's dtype, shape and bytes, every other value, keys in a fixed order), so
the digest can travel inside the file it vouches for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(tree: object) -> str:
    """SHA-256 of a checkpoint payload's contents: every tensor's dtype, shape and bytes,
    and every other value, in a fixed order of keys."""
    digest = hashlib.sha256()
    _feed(digest, tree)
    return digest.hexdigest()


def _feed(digest: Any, node: object) -> None:
    if isinstance(node, torch.Tensor):
        flat = node.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {flat.dtype} {tuple(node.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(node, Mapping):
        entries = cast(Mapping[object, object], node)
        digest.update(b"{")
        for key in sorted(entries, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, entries[key])
        digest.update(b"}")
    elif isinstance(node, list | tuple):
        digest.update(b"[")
        for item in cast(Sequence[object], node):
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(node).encode())
