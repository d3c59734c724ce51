"""Progress that says where it is: a bar on a terminal, a line now and then in a log file.

A tqdm bar redraws one line with carriage returns; written into a log file or a pipe it
is noise, and switched off (tqdm's `disable=None`) it leaves minutes of silence. So long
steps (tokenizing, reading speeches, scoring) draw the bar when stderr is a terminal and
otherwise write a plain line every `every_s` seconds: how far, how long so far, how long
still.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_S = 10.0  # a log gets one progress line per this many seconds of a long step


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`: short enough for every log line, exact enough for an ETA."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def remaining_s(done: float, total: float, elapsed_s: float) -> float | None:
    """Time still needed at the rate so far; None before anything is done."""
    if done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, total - done) * elapsed_s / done


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass(frozen=True)
class _Unit:
    """How the bar and a log line name an amount."""

    bar: str  # tqdm's unit
    scaled: bool  # whether tqdm shows k/M prefixes
    amounts: Callable[[int, int], str]  # (done, total) -> the line's "(... of ...)" part


_BYTES = _Unit("B", True, lambda done, total: f"{done / 1e6:.1f} of {total / 1e6:.1f} MB")


def byte_progress(
    desc: str,
    total: int,
    *,
    enabled: bool = True,
    every_s: float = LINE_EVERY_S,
    stream: TextIO | None = None,
) -> contextlib.AbstractContextManager[Callable[[int], object]]:
    """Progress over `total` bytes, handed out as the callable that advances it."""
    return _progress(desc, total, _BYTES, enabled=enabled, every_s=every_s, stream=stream)


def count_progress(
    desc: str,
    total: int,
    unit: str,
    *,
    every_s: float = LINE_EVERY_S,
    stream: TextIO | None = None,
) -> contextlib.AbstractContextManager[Callable[[int], object]]:
    """Progress over `total` things called `unit` (e.g. "targets"), as `byte_progress`."""
    counted = _Unit(unit, False, lambda done, total: f"{done:,} of {total:,} {unit}")
    return _progress(desc, total, counted, enabled=True, every_s=every_s, stream=stream)


@contextlib.contextmanager
def _progress(
    desc: str, total: int, unit: _Unit, *, enabled: bool, every_s: float, stream: TextIO | None
) -> Generator[Callable[[int], object]]:
    out = stream or sys.stderr
    if not enabled:
        yield lambda _: None
        return
    if is_terminal(out):
        with tqdm(total=total, desc=desc, unit=unit.bar, unit_scale=unit.scaled, file=out) as bar:
            yield bar.update
        return
    lines = _ProgressLines(desc, total, unit, every_s, out)
    yield lines.advance
    lines.finish()


class _ProgressLines:
    """`tokenizing: 41% (12.3 of 30.0 MB), 20s elapsed, eta 29s` every `every_s` seconds."""

    def __init__(self, desc: str, total: int, unit: _Unit, every_s: float, out: TextIO) -> None:
        self.desc, self.total, self.unit, self.every_s, self.out = desc, total, unit, every_s, out
        self.done = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.wrote = False

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self._write(now)

    def finish(self) -> None:
        # A step that never wrote a line was short; a long one says that it ended.
        if self.wrote:
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        elapsed = now - self.started
        done = min(self.done, self.total)
        share = done / self.total if self.total else 1.0
        left = remaining_s(done, self.total, elapsed)
        eta = "" if left is None else f", eta {format_duration(left)}"
        print(
            f"{self.desc}: {share:.0%} ({self.unit.amounts(done, self.total)}), "
            f"{format_duration(elapsed)} elapsed{eta}",
            file=self.out,
            flush=True,
        )
        self.wrote = True
