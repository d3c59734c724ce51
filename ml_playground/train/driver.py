"""The shape every training run shares, whatever the model.

evaluate and checkpoint every eval_interval -> set the scheduled learning rate -> one
optimizer step -> log every log_interval -> stop cleanly on Ctrl-C -> final evaluation.
The from-scratch GPT trainer and the LoRA fine-tuner differ only in how they build, step,
evaluate and save a model; they hand those four things to `run_loop` as plain functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ml_playground.config import TrainConfig
from ml_playground.distributed import any_rank
from ml_playground.train.interrupt import stop_requests
from ml_playground.train.reporting import RunReporter
from ml_playground.train.schedule import learning_rate_at


class Progress(Protocol):
    """Where a run stands; the loop advances it, checkpoints record it."""

    iter_num: int
    best_val_loss: float


@dataclass(frozen=True)
class Steps:
    """What a trainer does; the loop decides when."""

    step: Callable[[float], torch.Tensor]
    """One optimizer step at this learning rate; returns the step's (device) loss."""
    evaluate: Callable[[], dict[str, float]]
    """Mean loss per split: {"train": ..., "val": ...}."""
    save_last: Callable[[], Path]
    save_best: Callable[[], Path]


def run_loop(
    progress: Progress,
    steps: Steps,
    *,
    train: TrainConfig,
    reporter: RunReporter,
    tokens_per_step: int,
    device: torch.device,
    resumed: bool,
) -> float | None:
    """Train until max_iters; returns the last validation loss (None if none was measured).

    The first Ctrl-C finishes the current step, saves the last checkpoint and raises
    KeyboardInterrupt; every rank of a distributed run stops at the same step.
    """
    runtime = train.runtime
    start = progress.iter_num
    last_val: float | None = None

    def evaluate_and_save() -> None:
        nonlocal last_val
        losses = steps.evaluate()
        last_val = losses["val"]
        reporter.evaluation(progress.iter_num, train_loss=losses["train"], val_loss=last_val)
        improved = last_val < progress.best_val_loss
        progress.best_val_loss = min(progress.best_val_loss, last_val)
        steps.save_last()
        if improved or runtime.always_save_checkpoint:
            steps.save_best()

    window_start, window_steps = time.perf_counter(), 0
    with stop_requests() as stop_requested:
        while progress.iter_num < runtime.max_iters:
            if progress.iter_num % runtime.eval_interval == 0 and progress.iter_num > start:
                eval_start = time.perf_counter()
                evaluate_and_save()
                window_start += time.perf_counter() - eval_start  # not part of throughput
            lr = learning_rate_at(progress.iter_num, train.optim, train.schedule)
            loss = steps.step(lr)
            progress.iter_num += 1
            reporter.advance()
            window_steps += 1
            if progress.iter_num % runtime.log_interval == 0:
                elapsed = time.perf_counter() - window_start
                reporter.log_step(
                    progress.iter_num,
                    loss=loss.item(),  # the only host sync in the step
                    lr=lr,
                    tokens_per_sec=tokens_per_step * window_steps / elapsed,
                    step_time_ms=1000 * elapsed / window_steps,
                )
                window_start, window_steps = time.perf_counter(), 0
            # Ranks may see Ctrl-C at different steps; they must stop at the same one.
            if any_rank(stop_requested(), device):
                saved = steps.save_last()
                reporter.say(
                    f"interrupted at step {progress.iter_num}; saved {saved} "
                    "(run train again to resume)"
                )
                raise KeyboardInterrupt
        if progress.iter_num > start or not resumed:
            evaluate_and_save()
    return last_val


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
