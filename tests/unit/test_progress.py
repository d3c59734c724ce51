"""Progress of long steps in a log: lines that say how far, how long so far, how long still."""

from __future__ import annotations

import io
import re

import pytest

from ml_playground.progress import byte_progress, count_progress, format_duration

LINE = re.compile(
    r"^tokenizing: (?P<share>\d+)% \((?P<done>[\d.]+) of 4\.0 MB\), \d+s elapsed(, eta \d+s)?$"
)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (7620, "2h07m")],
)
def test_durations_read_as_seconds_minutes_or_hours(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_a_log_gets_lines_with_share_elapsed_and_eta_and_a_last_one_at_the_end() -> None:
    log = io.StringIO()  # not a terminal: no bar, plain lines

    with byte_progress("tokenizing", 4_000_000, every_s=0.0, stream=log) as advance:
        advance(1_000_000)
        advance(3_000_000)

    lines = log.getvalue().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(m["share"], m["done"]) for m in matches if m] == [
        ("25", "1.0"),
        ("100", "4.0"),
        ("100", "4.0"),
    ]
    assert "eta" in lines[0]


def test_a_step_shorter_than_the_line_interval_writes_nothing() -> None:
    log = io.StringIO()

    with byte_progress("tokenizing", 4_000_000, every_s=3600.0, stream=log) as advance:
        advance(4_000_000)

    assert log.getvalue() == ""


def test_a_count_of_things_is_shown_in_its_own_unit() -> None:
    log = io.StringIO()

    with count_progress("eval trained", 30_000, "targets", every_s=0.0, stream=log) as advance:
        advance(12_300)

    first = log.getvalue().splitlines()[0]
    assert re.match(r"^eval trained: 41% \(12,300 of 30,000 targets\), \d+s elapsed", first)
