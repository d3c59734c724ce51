"""The learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

from ml_playground.config import OptimConfig, ScheduleConfig


def learning_rate_at(step: int, optim: OptimConfig, schedule: ScheduleConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    peak = optim.learning_rate
    if not schedule.decay_lr:
        return peak
    if step < schedule.warmup_iters:
        # (step + 1) so the very first step already moves the weights.
        return peak * (step + 1) / schedule.warmup_iters
    if step >= schedule.lr_decay_iters:
        return schedule.min_lr
    span = schedule.lr_decay_iters - schedule.warmup_iters
    progress = (step - schedule.warmup_iters) / span if span > 0 else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule.min_lr + cosine * (peak - schedule.min_lr)
