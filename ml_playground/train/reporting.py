"""What a training run tells the user: a progress bar, log lines and TensorBoard events.

Both trainers (from-scratch GPT and LoRA) report through this class, so the TensorBoard
tags and the console format are the same whichever model is training. Every log line
says where the run is (`step 120/5000`), how long it has run since this (re)start and how
long it still needs, so a log file or a pipe, where the terminal's bar is off, tells as
much as the bar. The events are also what train/report_card.py builds the run report from:
it needs nothing else from the run, so `ml-playground report` can rebuild it at any time.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Protocol

import torch
from tqdm import tqdm

from ml_playground import console
from ml_playground.config import RuntimeConfig
from ml_playground.cpu_probe import cpu_model
from ml_playground.device import Precision
from ml_playground.progress import format_duration, remaining_s
from ml_playground.run_folder import tensorboard_dir

TAG_TRAIN_LOSS = "train/loss"
TAG_VAL_LOSS = "val/loss"
TAG_EVAL_TRAIN_LOSS = "eval/train_loss"
TAG_LR = "train/lr"
TAG_GRAD_NORM = "train/grad_norm"
"""The gradient norm before clipping, as the clip measured it (only with grad_clip > 0)."""
TAG_TOKENS_PER_SEC = "train/tokens_per_sec"
TAG_STEP_TIME_MS = "train/step_time_ms"
TAG_TOKENS_SEEN = "progress/tokens_seen"
"""Completed steps x tokens per optimizer step, at every log line, evaluation and stop."""
TAG_ELAPSED = "progress/elapsed_s"
"""Seconds since this (re)start of training; it starts again from 0 after a resume."""
TAG_MAX_ITERS = "run/max_iters"
TAG_PARAMETERS = "run/parameters"
TAG_TRAINABLE = "run/trainable_parameters"
TEXT_DESCRIPTION = "run/description"
TEXT_MACHINE = "run/machine"
TEXT_FIRST_SAMPLE = "samples/first"


class _EventWriter(Protocol):
    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...
    def add_text(self, tag: str, text_string: str, global_step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def tensorboard_writer(out_dir: Path) -> _EventWriter:
    """A writer of a new event file in out_dir/logs/tb."""
    # Imported here: tensorboard pulls in a lot and only training needs it.
    from torch.utils.tensorboard.writer import SummaryWriter  # noqa: PLC0415

    log_dir = tensorboard_dir(out_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    writer: _EventWriter = SummaryWriter(log_dir=str(log_dir))
    return writer


def machine_lines(precision: Precision, world_size: int) -> list[str]:
    """What the run computes on, as markdown list items (TensorBoard's text tab and the report)."""
    device = str(precision.device)
    if precision.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(precision.device)})"
    return [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores, "
        f"{torch.get_num_threads()} torch threads)",
        f"- device: {device}",
        f"- precision: {precision.dtype_name} ({precision.reason})",
        f"- processes: {world_size}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}",
    ]


class _Clock:
    """This (re)start's wall time, split into training steps and evaluations.

    The first step of a (re)start pays one-time costs (compiling, allocating, faulting in
    the weights) that can take as long as dozens of later steps; time per step and the
    ETA are measured from its end, or the first log line would promise hours for minutes.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.warm: float | None = None  # when the first step of this (re)start ended
        self.warm_steps = 0  # steps completed since then
        self.eval_s = 0.0
        self.evals = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step_done(self) -> bool:
        """Count a finished step; True for the first one, which timing leaves out."""
        if self.warm is None:
            self.warm = time.perf_counter()
            return True
        self.warm_steps += 1
        return False

    def remaining(self, steps_left: int, evals_left: int) -> float | None:
        """Steps at the time per step since the first one, evaluation excluded, plus the
        evaluations still ahead at their measured mean (none measured yet: steps only)."""
        if self.warm is None:
            return None
        measured = time.perf_counter() - self.warm - self.eval_s
        steps_s = remaining_s(self.warm_steps, self.warm_steps + steps_left, measured)
        if steps_s is None:
            return None
        return steps_s + (evals_left * self.eval_s / self.evals if self.evals else 0.0)


class RunReporter:
    """Progress bar, a line every log_interval with step/total, elapsed and ETA, and
    TensorBoard events (scalars, the run's description and machine, later the report's)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        eval_interval: int,
        tokens_per_step: int,
        tensorboard: bool,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_step = start_step
        self.eval_interval = eval_interval
        self.tokens_per_step = tokens_per_step
        self._writer = tensorboard_writer(out_dir) if tensorboard and enabled else None
        self._clock = _Clock()
        self._window_start, self._window_steps = time.perf_counter(), 0
        self._first_step_s = 0.0
        # disable=None turns the bar off when stderr is not a terminal (CI, pipes, tests).
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=None if enabled else True,
            file=sys.stderr,
        )

    @classmethod
    def of_run(
        cls, runtime: RuntimeConfig, *, start_step: int, tokens_per_step: int, enabled: bool
    ) -> RunReporter:
        """The reporter of a run with these [train.runtime] settings."""
        return cls(
            runtime.out_dir,
            total_steps=runtime.max_iters,
            start_step=start_step,
            eval_interval=runtime.eval_interval,
            tokens_per_step=tokens_per_step,
            tensorboard=runtime.tensorboard_enabled,
            enabled=enabled,
        )

    def __enter__(self) -> RunReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def say(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            tqdm.write(message, file=sys.stdout)
        except BrokenPipeError:
            # `train ... | head`: whoever read the log has gone. The run goes on and saves
            # as it would have; only what it says now goes nowhere.
            console.silence_stdout()

    def announce(
        self,
        description: str,
        precision: Precision,
        *,
        resumed: bool,
        world_size: int,
        model: torch.nn.Module,
    ) -> None:
        """The run's first lines (what trains where, from which step, in which precision),
        and the same recorded once per (re)start for the report."""
        start = f"resuming at step {self.start_step}" if resumed else "fresh start"
        self.say(
            f"{description} on {precision.device}; "
            f"{self.tokens_per_step:,} tokens per optimizer step; {start}"
        )
        self.say(f"precision: {precision.dtype_name} ({precision.reason})")
        self.describe_run(
            description,
            machine_lines(precision, world_size),
            parameters=sum(parameter.numel() for parameter in model.parameters()),
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        )

    def describe_run(
        self, description: str, machine: list[str], *, parameters: int, trainable: int
    ) -> None:
        """What trains on what, recorded once per (re)start for the report."""
        if self._writer is None:
            return
        step = self.start_step
        self._writer.add_text(TEXT_DESCRIPTION, description, step)
        self._writer.add_text(TEXT_MACHINE, "\n".join(machine), step)
        self._writer.add_scalar(TAG_MAX_ITERS, self.total_steps, step)
        self._writer.add_scalar(TAG_PARAMETERS, parameters, step)
        self._writer.add_scalar(TAG_TRAINABLE, trainable, step)

    def advance(self) -> None:
        """One optimizer step finished (moves the progress bar and its ETA)."""
        self._bar.update(1)
        if self._clock.step_done():
            # The first step's one-time costs stay out of time per step and throughput,
            # unless it is the only step a log line can speak of (log_interval = 1).
            self._first_step_s = time.perf_counter() - self._window_start
            self._window_start = time.perf_counter()
            return
        self._window_steps += 1

    def log_step(self, step: int, *, loss: float, lr: float, grad_norm: float | None) -> None:
        """Record the steps since the last log line (`step` counts completed steps)."""
        window_s = time.perf_counter() - self._window_start
        if self._window_steps == 0:
            window_s = self._first_step_s
        steps = max(self._window_steps, 1)
        tokens_per_sec = self.tokens_per_step * steps / window_s if window_s > 0 else 0.0
        step_time_ms = 1000 * window_s / steps
        self._window_start, self._window_steps = time.perf_counter(), 0
        if self._writer is not None:
            self._writer.add_scalar(TAG_TRAIN_LOSS, loss, step)
            self._writer.add_scalar(TAG_LR, lr, step)
            if grad_norm is not None:
                self._writer.add_scalar(TAG_GRAD_NORM, grad_norm, step)
            self._writer.add_scalar(TAG_TOKENS_PER_SEC, tokens_per_sec, step)
            self._writer.add_scalar(TAG_STEP_TIME_MS, step_time_ms, step)
        self.mark_progress(step)
        self._bar.set_postfix_str(f"loss={loss:.4f}", refresh=False)
        grad = "" if grad_norm is None else f" | grad {grad_norm:.3f}"
        self.say(
            f"step {self._where(step)} | loss {loss:.4f} | lr {lr:.2e}{grad} | "
            f"{step_time_ms:7.1f} ms/step | {tokens_per_sec:,.0f} tok/s | {self._timing(step)}"
        )

    @contextlib.contextmanager
    def evaluating(self) -> Generator[None]:
        """Time spent in here counts neither toward throughput nor toward time per step."""
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self._window_start += spent
            self._clock.eval_s += spent
            self._clock.evals += 1

    def evaluation(self, step: int, *, train_loss: float, val_loss: float) -> None:
        if self._writer is not None:
            self._writer.add_scalar(TAG_EVAL_TRAIN_LOSS, train_loss, step)
            self._writer.add_scalar(TAG_VAL_LOSS, val_loss, step)
        self.mark_progress(step)
        self.say(
            f"eval {self._where(step)} | train loss {train_loss:.4f} | val loss {val_loss:.4f}"
        )

    def interrupted(self, step: int, saved: Path) -> None:
        self.mark_progress(step)
        self.say(f"interrupted at step {step}; saved {saved} (run train again to resume)")

    def done(self, step: int, best_val_loss: float, out_dir: Path) -> None:
        if step > self.start_step:
            self.mark_progress(step)
        self.say(f"done: step {step}, best val loss {best_val_loss:.4f}; saved in {out_dir}")

    def mark_progress(self, step: int) -> None:
        """Tokens seen and time spent at `step`: the report's tokens and wall time."""
        if self._writer is None:
            return
        self._writer.add_scalar(TAG_TOKENS_SEEN, step * self.tokens_per_step, step)
        self._writer.add_scalar(TAG_ELAPSED, self._clock.elapsed(), step)
        self._writer.flush()

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _where(self, step: int) -> str:
        width = len(str(self.total_steps))
        return f"{step:>{width}}/{self.total_steps}"

    def _timing(self, step: int) -> str:
        left = self._clock.remaining(self.total_steps - step, self._evals_left(step))
        eta = "?" if left is None else format_duration(left)
        return f"elapsed {format_duration(self._clock.elapsed())} | eta {eta}"

    def _evals_left(self, step: int) -> int:
        """Evaluations at or after `step`: the eval_interval boundaries before the end, and
        the final one (at an eval boundary the log line comes out ahead of that evaluation)."""
        if step >= self.total_steps:
            return 1
        first = -(-step // self.eval_interval) * self.eval_interval
        return len(range(first, self.total_steps, self.eval_interval)) + 1


def log_text(out_dir: Path, tag: str, text: str, step: int) -> None:
    """One text event in a new event file of out_dir/logs/tb (e.g. a sample after training)."""
    writer = tensorboard_writer(out_dir)
    try:
        writer.add_text(tag, text, step)
    finally:
        writer.close()
