"""`compare`'s table, notes and plot, from run events as train/reporting.py logs them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib import image

from ml_playground.compare import (
    ComparedRun,
    Comparison,
    figure,
    legend_labels,
    notes,
    rows,
    write_plot,
)
from ml_playground.train import reporting
from ml_playground.train.report_card import RunEvents, summarize


def run(
    name: str, tokenizer: str | None, val: list[tuple[int, float]], bpb: float | None = None
) -> ComparedRun:
    """A run that logged every step and saw 256 tokens a step."""
    steps = range(1, 5)
    events = RunEvents(
        scalars={
            reporting.TAG_TRAIN_LOSS: [(step, 4.0 - 0.1 * step) for step in steps],
            reporting.TAG_VAL_LOSS: val,
            reporting.TAG_TOKENS_SEEN: [(step, 256.0 * step) for step in steps],
            reporting.TAG_PARAMETERS: [(0, 1000.0)],
            reporting.TAG_TRAINABLE: [(0, 10.0)],
        },
        texts={},
        started=0.0,
        ended=1.0,
    )
    return ComparedRun(name, Path(name), tokenizer, summarize(events), events, bpb)


def test_the_legend_names_every_run_once_for_train_and_once_for_val() -> None:
    comparison = Comparison(
        (run("gpt2", "char", [(2, 3.5), (4, 3.2)]), run("llama", "char", [(2, 3.6), (4, 3.1)]))
    )

    drawn = figure(comparison)

    assert legend_labels(drawn) == ["gpt2 (train)", "gpt2 (val)", "llama (train)", "llama (val)"]
    lines = drawn.axes[0].get_lines()
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()


def test_losses_are_drawn_over_tokens_seen() -> None:
    drawn = figure(
        Comparison((run("a", "char", [(2, 3.5), (4, 3.2)]), run("b", "char", [(4, 3.0)])))
    )

    val_line = drawn.axes[0].get_lines()[1]
    assert np.asarray(val_line.get_xdata()).tolist() == [512.0, 1024.0]
    assert drawn.axes[0].get_xlabel() == "tokens seen"


def test_the_written_plot_is_a_png_that_decodes() -> None:
    handle = io.BytesIO()
    write_plot(Comparison((run("a", "char", [(4, 3.0)]), run("b", "char", [(4, 3.1)]))), handle)

    handle.seek(0)
    assert image.imread(handle, format="png").shape[:2] == (500, 1000)


def test_same_tokenizers_rank_by_val_loss_and_show_trainable_parameters() -> None:
    comparison = Comparison((run("a", "char", [(4, 3.0)]), run("b", "char", [(4, 2.5)])))

    assert notes(comparison) == [
        "all runs use the tokenizer char",
        "best: b (lowest best val loss)",
    ]
    assert rows(comparison)[1][1] == "1,000 (10)"


def test_different_tokenizers_make_losses_incomparable_and_rank_by_bits_per_byte() -> None:
    comparison = Comparison(
        (run("a", "char", [(4, 1.0)], bpb=1.9), run("b", "tiktoken gpt2", [(4, 5.0)], bpb=1.7))
    )

    lines = notes(comparison)

    assert lines[0].startswith("losses are not comparable: the runs use different tokenizers")
    assert lines[-1] == "best: b (lowest bits per byte)"
    assert figure(comparison).axes[0].get_title() == "loss (different tokenizers: not comparable)"


def test_a_run_of_unknown_tokenizer_is_not_compared_on_loss() -> None:
    comparison = Comparison((run("a", "char", [(4, 1.0)]), run("b", None, [(4, 0.5)])))

    lines = notes(comparison)

    assert "b: unknown (no meta.json)" in lines[0]
    assert "no bits per byte for a, b: run `ml-playground eval` on each" in lines
