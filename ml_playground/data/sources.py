"""Where raw text comes from: the `[prepare] source = "text"` rule (`text_sources`).

A text corpus is read from the first of these that is set:

    raw_text_path         one file
    raw_dir               every .txt below a folder
    dataset_dir/input.txt a corpus placed where the experiment keeps its data
    download_url          fetched into dataset_dir/input.txt
    fallback_text         a corpus bundled with the package by name ("tiny_shakespeare"),
                          read in place; or a file (an experiment's sample), seeded into
                          dataset_dir/input.txt, the file a user then replaces
    else                  one error line saying where to put text
"""

from __future__ import annotations

import http.client
import shlex
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ml_playground.atomic import atomic_open
from ml_playground.config import PrepareConfig
from ml_playground.errors import DataError
from ml_playground.progress import byte_progress

DOWNLOAD_BLOCK_BYTES = 1 << 20
# Bundled so that the first run works on a machine without network (data/bundled/LICENSES.md).
TINY_SHAKESPEARE = Path(__file__).with_name("bundled") / "tinyshakespeare.txt"
BUNDLED_CORPORA = {"tiny_shakespeare": (TINY_SHAKESPEARE, "Tiny Shakespeare")}
"""What `[prepare] fallback_text` may name instead of a file: name -> (file, title)."""


def raw_text_file(path: Path) -> Path:
    """`[prepare] raw_text_path`, checked: an existing file, not a folder."""
    if path.is_dir():
        raise DataError(
            f"prepare.raw_text_path {path} is a folder, not a file; name one file there, or "
            "set prepare.raw_dir to read every file below the folder"
        )
    if not path.is_file():
        raise DataError(
            f"prepare.raw_text_path {path} does not exist; fix the path or remove the key"
        )
    return path


def text_files(raw_dir: Path) -> list[Path]:
    """Every `*.txt` file below `raw_dir`, recursively, in sorted path order."""
    if not raw_dir.is_dir():
        raise DataError(f"raw text folder not found: {raw_dir}; create it and put .txt files in it")
    files = sorted(path for path in raw_dir.rglob("*.txt") if path.is_file())
    if not files:
        raise DataError(f"no .txt files found under {raw_dir}; put the raw text files there")
    return files


def text_sources(prepare: PrepareConfig) -> list[Path]:
    """The corpus to tokenize, by the rule of the module docstring."""
    if prepare.raw_text_path is not None:
        return [raw_text_file(prepare.raw_text_path)]
    if prepare.raw_dir is not None:
        if not prepare.raw_dir.is_dir():
            raise DataError(
                f"prepare.raw_dir {prepare.raw_dir} is not a folder; fix the path or remove the key"
            )
        return text_files(prepare.raw_dir)
    target = prepare.dataset_dir / "input.txt"
    if not target.is_file() and prepare.download_url is not None:
        print(f"downloading {prepare.download_url} to {target}")
        download(prepare.download_url, target)
    if target.is_file():
        return [target]
    if prepare.fallback_text is not None:
        return [_fallback(prepare.fallback_text, target)]
    # The instruction must work as written, also where the folder does not exist yet.
    folder = "" if target.parent.is_dir() else f"mkdir -p {shlex.quote(str(target.parent))} and "
    raise DataError(
        f"no text to prepare: {folder}place a corpus at {target}, or set "
        "[prepare] raw_text_path (a file) or raw_dir (a folder of .txt files)"
    )


def _fallback(value: str, target: Path) -> Path:
    """A bundled corpus read in place, or a sample file seeded into `target`."""
    if value in BUNDLED_CORPORA:
        path, title = BUNDLED_CORPORA[value]
        print(f"no corpus placed at {target}: using the bundled {title}")
        return path
    sample = Path(value)
    if not sample.is_file():
        names = ", ".join(repr(name) for name in BUNDLED_CORPORA)
        raise DataError(
            f"prepare.fallback_text = {value!r} is neither a file nor a bundled corpus "
            f"({names}); fix the path or remove the key"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a half-copied input.txt would be taken for a corpus the user placed.
    with sample.open("rb") as source, atomic_open(target) as seeded:
        shutil.copyfileobj(source, seeded)
    print(
        f"no corpus given: seeded the bundled sample {sample.name} "
        f"({sample.stat().st_size:,} bytes) into {target}; replace it with your own text"
    )
    return target


def download(
    url: str,
    dest: Path,
    *,
    timeout: float = 30,
    retries: int = 3,
    backoff_seconds: float = 1.0,
) -> None:
    """Fetch `url` into `dest` atomically, retrying transient failures with backoff.

    `retries` counts attempts after the first; the wait doubles from `backoff_seconds`.
    Client errors (4xx other than 408/429) and a host name that does not resolve are not
    retried: asking again will not help. Progress goes to stderr (progress.py), the line
    saying what arrived to stdout, like prepare's other status lines.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DataError(f"cannot download {url!r}: only http and https URLs are supported")
    # The error below tells the user to place the file at `dest`: its folder must exist.
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(max(retries, 0) + 1):
        if attempt:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
        try:
            received = _fetch(url, dest, timeout)
            print(f"downloaded {received:,} bytes to {dest}")
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            failures.append(f"HTTP {exc.code} {exc.reason}")
            if exc.code < 500 and exc.code not in (408, 429):
                break
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, socket.gaierror):
                failures.append(f"host name not resolved: {reason}; offline?")
                break
            failures.append(str(reason) or type(reason).__name__)
    raise DataError(
        f"download of {url} failed after {len(failures)} attempt(s) ({failures[-1]});"
        f" download it yourself and place it at {dest}"
    )


def _fetch(url: str, dest: Path, timeout: float) -> int:
    """Write the body to `dest`; the number of bytes received."""
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest) as out:
        # A connection that drops early can look like a clean end of the body.
        expected = response.headers.get("Content-Length")
        total = int(expected) if expected is not None else None
        received = 0
        # Without a length there is no "how far" to show; the closing line says what arrived.
        with byte_progress("downloading", total or 0, enabled=total is not None) as advance:
            while block := response.read(DOWNLOAD_BLOCK_BYTES):
                out.write(block)
                received += len(block)
                advance(len(block))
        if total is not None and received != total:
            raise http.client.IncompleteRead(b"", total - received)
    return received
