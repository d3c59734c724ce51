"""What a training run tells the user: a progress bar, log lines and TensorBoard scalars.

Both trainers (from-scratch GPT and LoRA) report through this class, so the TensorBoard
tags and the console format are the same whichever model is training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Protocol

from tqdm import tqdm

TAG_TRAIN_LOSS = "train/loss"
TAG_VAL_LOSS = "val/loss"
TAG_EVAL_TRAIN_LOSS = "eval/train_loss"
TAG_LR = "train/lr"
TAG_TOKENS_PER_SEC = "train/tokens_per_sec"
TAG_STEP_TIME_MS = "train/step_time_ms"
TB_SUBDIR = Path("logs") / "tb"


class _ScalarWriter(Protocol):
    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _tensorboard_writer(log_dir: Path) -> _ScalarWriter:
    # Imported here: tensorboard pulls in a lot and only training needs it.
    from torch.utils.tensorboard.writer import SummaryWriter  # noqa: PLC0415

    log_dir.mkdir(parents=True, exist_ok=True)
    writer: _ScalarWriter = SummaryWriter(log_dir=str(log_dir))
    return writer


class RunReporter:
    """Progress bar with ETA, a compact line every log_interval, TensorBoard scalars."""

    def __init__(
        self,
        out_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        tensorboard: bool,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self._writer = _tensorboard_writer(out_dir / TB_SUBDIR) if tensorboard and enabled else None
        # disable=None turns the bar off when stderr is not a terminal (CI, pipes, tests).
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=None if enabled else True,
            file=sys.stderr,
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
        if self.enabled:
            tqdm.write(message, file=sys.stdout)

    def advance(self) -> None:
        """One optimizer step finished (moves the progress bar and its ETA)."""
        self._bar.update(1)

    def log_step(
        self, step: int, *, loss: float, lr: float, tokens_per_sec: float, step_time_ms: float
    ) -> None:
        """Record the metrics of the last log interval (`step` counts completed steps)."""
        if self._writer is not None:
            self._writer.add_scalar(TAG_TRAIN_LOSS, loss, step)
            self._writer.add_scalar(TAG_LR, lr, step)
            self._writer.add_scalar(TAG_TOKENS_PER_SEC, tokens_per_sec, step)
            self._writer.add_scalar(TAG_STEP_TIME_MS, step_time_ms, step)
        self._bar.set_postfix_str(f"loss={loss:.4f}", refresh=False)
        self.say(
            f"step {step:>6} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{step_time_ms:7.1f} ms/step | {tokens_per_sec:,.0f} tok/s"
        )

    def evaluation(self, step: int, *, train_loss: float, val_loss: float) -> None:
        if self._writer is not None:
            self._writer.add_scalar(TAG_EVAL_TRAIN_LOSS, train_loss, step)
            self._writer.add_scalar(TAG_VAL_LOSS, val_loss, step)
            self._writer.flush()
        self.say(f"eval {step:>6} | train loss {train_loss:.4f} | val loss {val_loss:.4f}")

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
