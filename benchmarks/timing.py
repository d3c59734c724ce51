"""Wall-clock timing of several cases side by side.

The machine these benchmarks run on is shared and noisy, so absolute times drift from minute
to minute. Cases that are compared with each other therefore run interleaved, round by
round (fp32 step, bf16 step, fp32 step, ...), so a burst of load hits both alike and their
ratio stays meaningful. Each case is warmed up first, so one-off costs (allocating optimizer
state, first-touch page faults, kernel selection) stay out of the timed runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """Something to time: `warmup` once, then `run` `repeats` times."""

    name: str
    run: Callable[[], object]
    repeats: int
    warmup: Callable[[], object]


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_side_by_side(cases: Sequence[Case]) -> list[Timing]:
    """Warm every case up, then time them in interleaved rounds; one Timing per case."""
    for case in cases:
        if case.repeats < 1:
            raise ValueError(f"case {case.name!r} needs at least one repeat, got {case.repeats}")
        case.warmup()
    seconds: dict[str, list[float]] = {case.name: [] for case in cases}
    for round_index in range(max(case.repeats for case in cases)):
        for case in cases:
            if round_index < case.repeats:
                seconds[case.name].append(time_once(case.run))
    return [Timing(case.name, tuple(seconds[case.name])) for case in cases]


def time_once(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start
