"""The run report's numbers, derived from TensorBoard events as train/reporting.py logs them."""

from __future__ import annotations

from ml_playground.train import reporting
from ml_playground.train.report_card import RunEvents, summarize


def events(scalars: dict[str, list[tuple[int, float]]]) -> RunEvents:
    return RunEvents(scalars=scalars, texts={}, started=0.0, ended=1.0)


def test_wall_time_adds_up_every_restart_whose_clock_began_again() -> None:
    # Started, stopped by Ctrl-C at step 4 after 2.5 s, resumed for another 1.5 s.
    elapsed = [(2, 1.0), (4, 2.0), (4, 2.5), (6, 0.5), (8, 1.5)]

    facts = summarize(events({reporting.TAG_ELAPSED: elapsed}))

    assert facts.wall_time_s == 2.5 + 1.5
    assert facts.steps == 8


def test_best_is_the_lowest_val_loss_and_last_the_latest() -> None:
    val = [(5, 3.0), (10, 2.0), (15, 2.5)]

    facts = summarize(
        events({reporting.TAG_VAL_LOSS: val, reporting.TAG_TOKENS_SEEN: [(15, 1920.0)]})
    )

    assert facts.best_val_loss == (10, 2.0)
    assert facts.last_val_loss == (15, 2.5)
    assert facts.tokens_seen == 1920
    assert facts.tokens_per_sec is None  # never logged: the report says n/a
