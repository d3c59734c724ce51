"""The learning-rate schedule: linear warmup from the first step, cosine decay to a floor."""

from __future__ import annotations

import itertools

import pytest

from ml_playground.config import OptimConfig, ScheduleConfig
from ml_playground.train.schedule import learning_rate_at

PEAK = 1e-3
FLOOR = 1e-4
WARMUP = 10
DECAY_END = 110

OPTIM = OptimConfig(learning_rate=PEAK)
SCHEDULE = ScheduleConfig(warmup_iters=WARMUP, lr_decay_iters=DECAY_END, min_lr=FLOOR)


def lr(step: int, schedule: ScheduleConfig = SCHEDULE) -> float:
    return learning_rate_at(step, OPTIM, schedule)


def test_warmup_rises_linearly_and_the_first_step_already_moves_the_weights() -> None:
    rates = [lr(step) for step in range(WARMUP)]

    assert rates[0] == pytest.approx(PEAK / WARMUP)
    assert rates == pytest.approx([PEAK * (step + 1) / WARMUP for step in range(WARMUP)])


def test_the_peak_is_reached_on_the_last_warmup_step_and_held_as_decay_begins() -> None:
    assert lr(WARMUP - 1) == pytest.approx(PEAK)
    assert lr(WARMUP) == pytest.approx(PEAK)


def test_cosine_midpoint_is_halfway_between_peak_and_floor() -> None:
    midpoint = WARMUP + (DECAY_END - WARMUP) // 2

    assert lr(midpoint) == pytest.approx((PEAK + FLOOR) / 2)


def test_decay_never_rises_between_warmup_and_decay_end() -> None:
    rates = [lr(step) for step in range(WARMUP, DECAY_END + 1)]

    assert all(later <= earlier for earlier, later in itertools.pairwise(rates))


@pytest.mark.parametrize("step", [DECAY_END, DECAY_END + 1, 10 * DECAY_END])
def test_the_floor_holds_from_lr_decay_iters_on(step: int) -> None:
    assert lr(step) == FLOOR


@pytest.mark.parametrize("step", [0, WARMUP // 2, WARMUP, DECAY_END, 10 * DECAY_END])
def test_without_decay_the_rate_is_constant_at_the_peak(step: int) -> None:
    constant = ScheduleConfig(
        decay_lr=False, warmup_iters=WARMUP, lr_decay_iters=DECAY_END, min_lr=FLOOR
    )

    assert lr(step, constant) == PEAK


def test_without_warmup_the_first_step_runs_at_the_peak() -> None:
    no_warmup = ScheduleConfig(warmup_iters=0, lr_decay_iters=DECAY_END, min_lr=FLOOR)

    assert lr(0, no_warmup) == pytest.approx(PEAK)
