"""The speed recipe's two targets, read from one race: time to the first eval at val <= 1.90,
and the lowest val at an eval inside the baseline's whole wall time, whatever its length."""

from __future__ import annotations

from benchmarks.quality import BASELINE, SPEEDRUN, QualityResult, Reached, speedrun_summary


def race(speedrun_evals: list[tuple[int, float, float]]) -> list[QualityResult]:
    baseline = QualityResult(BASELINE, "float32", 90.0, [(1000, 45.0, 2.05), (2000, 90.0, 1.89)])
    speedrun_seconds = speedrun_evals[-1][1]
    return [baseline, QualityResult(SPEEDRUN, "bfloat16", speedrun_seconds, speedrun_evals)]


def test_a_recipe_longer_than_the_baseline_wall_counts_only_its_evals_inside_it() -> None:
    # The recipe runs past the baseline's 90 s; its lower val after that must not count.
    summary = speedrun_summary(
        race(
            [
                (300, 18.0, 1.95),
                (350, 21.0, 1.89),
                (1400, 84.0, 1.66),
                (1500, 90.0, 1.64),
                (1600, 96.0, 1.60),
            ]
        )
    )

    assert summary is not None
    assert summary.speedrun_to_target == Reached(350, 21.0, 1.89)
    assert summary.baseline_to_target == Reached(2000, 90.0, 1.89)
    assert summary.ratio == 21.0 / 90.0
    assert summary.baseline_wall == 90.0
    assert summary.best_within_wall == Reached(1500, 90.0, 1.64)


def test_the_best_val_inside_the_wall_need_not_be_the_last_eval() -> None:
    summary = speedrun_summary(race([(400, 24.0, 1.88), (800, 48.0, 1.70), (1200, 72.0, 1.72)]))

    assert summary is not None
    assert summary.best_within_wall == Reached(800, 48.0, 1.70)
