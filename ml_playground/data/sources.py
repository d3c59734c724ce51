"""Where raw text comes from: `.txt` files in a folder, or a download to a known path."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ml_playground.atomic import atomic_open
from ml_playground.errors import DataError

DOWNLOAD_BLOCK_BYTES = 1 << 20


def text_files(raw_dir: Path) -> list[Path]:
    """Every `*.txt` file below `raw_dir`, recursively, in sorted path order."""
    if not raw_dir.is_dir():
        raise DataError(f"raw text folder not found: {raw_dir}; create it and put .txt files in it")
    files = sorted(path for path in raw_dir.rglob("*.txt") if path.is_file())
    if not files:
        raise DataError(f"no .txt files found under {raw_dir}; put the raw text files there")
    return files


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
    Client errors (4xx other than 408/429) are not retried: asking again will not help.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DataError(f"cannot download {url!r}: only http and https URLs are supported")
    attempts = max(retries, 0) + 1
    failures: list[str] = []
    while len(failures) < attempts:
        if failures:
            time.sleep(backoff_seconds * 2 ** (len(failures) - 1))
        try:
            _fetch(url, dest, timeout)
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            failures.append(f"HTTP {exc.code} {exc.reason}")
            if not _worth_retrying(exc.code):
                break
        except (OSError, http.client.HTTPException) as exc:
            failures.append(_describe(exc))
    raise DataError(
        f"download of {url} failed after {len(failures)} attempt(s) ({failures[-1]});"
        f" download it yourself and place it at {dest}"
    )


def _fetch(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest) as out:
        # A connection that drops early can look like a clean end of the body.
        expected = response.headers.get("Content-Length")
        received = 0
        while block := response.read(DOWNLOAD_BLOCK_BYTES):
            out.write(block)
            received += len(block)
        if expected is not None and received != int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - received)


def _worth_retrying(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
