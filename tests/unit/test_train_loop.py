"""`train(run)`, the loop itself, driven through `assemble_run` with a two-parameter model.

The model's loss is known in closed form, so a step's accumulated gradient can be computed
by hand; it logs each call (training under autograd, evaluation without) and the backend's
`write` logs each save, so the order of steps, evaluations and saves is read off one list.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ml_playground.checkpoint import TrainingState
from ml_playground.config import TrainConfig
from ml_playground.device import resolve_precision
from ml_playground.distributed import Ranks
from ml_playground.errors import SavedAndStopped
from ml_playground.run_folder import Slot
from ml_playground.train.loop import Run, TokenFiles, assemble_run, train

VOCAB, BLOCK = 8, 4


class Line(nn.Module):
    """loss(x, y) = mean((a * x - b - y)^2): two parameters, a gradient known by hand."""

    def __init__(self, events: list[str], interrupt_at_step: int | None) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.tensor(-0.25))
        self.events = events
        self.interrupt_at_step = interrupt_at_step
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.events.append("train")
            self.batches.append((x.clone(), y.clone()))
            if len(self.batches) == self.interrupt_at_step:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C, in the middle of a step
        else:
            self.events.append("eval")
        return line_loss(self.a, self.b, x, y)


def line_loss(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((a * x.float() - b - y.float()) ** 2).mean()


def line_run(
    tmp_path: Path, *, interrupt_at_step: int | None = None, **runtime: int | bool
) -> tuple[Run, Line, list[str]]:
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=256, dtype=np.uint16)
    for name in ("train.bin", "val.bin"):
        tokens.tofile(tmp_path / name)
    settings = TrainConfig.model_validate(
        {
            "data": {"batch_size": 2, "grad_accum_steps": runtime.pop("grad_accum_steps", 1)},
            "optim": {"grad_clip": 0.0, "weight_decay": 0.0},
            "schedule": {"decay_lr": False},
            "runtime": {
                "out_dir": tmp_path / "out",
                "device": "cpu",
                "eval_iters": 1,
                "log_interval": 1,
                "tensorboard_enabled": False,
                "always_save_checkpoint": True,
                **runtime,
            },
        }
    )
    events: list[str] = []
    model = Line(events, interrupt_at_step)

    def write(slots: tuple[Slot, ...], state: TrainingState) -> Path:
        events.append(f"save {'+'.join(slots)} at {state.iter_num}")
        return tmp_path / slots[0]

    run = assemble_run(
        settings,
        resolve_precision("cpu", "float32"),
        Ranks(),
        model=model,
        files=TokenFiles(tmp_path / "train.bin", tmp_path / "val.bin", "uint16", VOCAB),
        block_size=BLOCK,
        loss=lambda forward, x, y: forward(x, y),
        write=write,
        description="training a line",
        resume=None,
        resume_source="",
    )
    return run, model, events


def test_a_step_accumulates_the_mean_gradient_of_its_micro_batches(tmp_path: Path) -> None:
    run, model, events = line_run(tmp_path, max_iters=1, eval_interval=10, grad_accum_steps=3)
    a, b = (torch.tensor(value, requires_grad=True) for value in (0.5, -0.25))
    grads: list[torch.Tensor] = []

    # A copy: autograd may keep the first micro-batch's tensor as .grad and add into it.
    def record(grad: torch.Tensor) -> None:
        grads.append(grad.clone())

    model.a.register_hook(record)  # type: ignore[no-untyped-call]  # torch leaves it unannotated

    train(run)

    assert events[:3] == ["train"] * 3 and "train" not in events[3:]
    expected = sum(line_loss(a, b, x, y) for x, y in model.batches) / 3
    assert isinstance(expected, torch.Tensor)
    torch.autograd.backward(expected)
    assert len(grads) == 3  # one backward per micro-batch, summed into one step
    torch.testing.assert_close(torch.stack(grads).sum(), a.grad)
    assert model.a.item() != 0.5  # and the step applied it


def test_evaluation_saves_best_then_last_every_eval_interval_and_last_final_at_the_end(
    tmp_path: Path,
) -> None:
    run, _, events = line_run(tmp_path, max_iters=4, eval_interval=2)

    summary = train(run)

    evaluation = ["eval", "eval"]  # the train split, then the val split
    assert events == [
        *["train", "train", *evaluation, "save best at 2", "save last at 2"],
        *["train", "train", *evaluation, "save best at 4", "save last+final at 4"],
    ]
    assert summary.iter_num == 4


@pytest.mark.parametrize(
    ("interrupt_at_step", "expected"),
    [
        (2, ["train", "train", "save last at 2"]),
        # At an eval boundary the step is evaluated and saved first, as without Ctrl-C.
        (3, ["train"] * 3 + ["eval", "eval", "save best at 3", "save last at 3", "save last at 3"]),
    ],
    ids=["between evaluations", "at an eval boundary"],
)
def test_ctrl_c_finishes_the_step_saves_last_and_stops(
    tmp_path: Path, interrupt_at_step: int, expected: list[str]
) -> None:
    run, _, events = line_run(
        tmp_path, interrupt_at_step=interrupt_at_step, max_iters=10, eval_interval=3
    )

    with pytest.raises(SavedAndStopped) as stopped:
        train(run)

    assert events == expected
    assert stopped.value.saved == tmp_path / "last"
    assert run.iter_num == interrupt_at_step
