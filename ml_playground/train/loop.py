"""The training loop, written once for every model, its definitions in the order a run
meets them: session -> assemble -> train -> step -> estimate_loss -> save.

`train` reads top to bottom: announce -> (eval_only: evaluate and stop) -> while step <
max_iters: {scheduled learning rate; one optimizer step over grad_accum_steps micro-batches;
log every log_interval; evaluate and save every eval_interval; stop cleanly on Ctrl-C} ->
final evaluation and save. A backend (train/gpt.py, train/hf.py) builds a `Run` with
`assemble_run` and supplies only what differs: the model, the loss of a batch, and how its
weights are written.

Under torchrun the loop runs once per rank with DistributedDataParallel (train/forward.py):
each rank draws its own batches, gradients are averaged on the last micro-step of an
accumulation, evaluation losses over ranks, and only rank 0 writes files. The first Ctrl-C
finishes the step, saves the last slot and raises SavedAndStopped (the CLI exits 130);
every rank stops at the same step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml_playground import device, run_folder
from ml_playground.checkpoint import TrainingState
from ml_playground.config import TrainConfig
from ml_playground.data.batches import BatchSampler, check_token_ids
from ml_playground.device import Precision, resolve_precision, seed_everything
from ml_playground.distributed import (
    Ranks,
    any_rank,
    gather_state,
    mean_across_ranks,
    precision_for,
    process_group,
    replicas_identical,
)
from ml_playground.errors import CheckpointError, SavedAndStopped
from ml_playground.run_folder import Slot
from ml_playground.train.forward import Forward, training_forward
from ml_playground.train.interrupt import stop_requests
from ml_playground.train.optim import Optimizers, build_optimizers, saved_optimizer
from ml_playground.train.reporting import RunReporter
from ml_playground.train.schedule import learning_rate_at

EVAL_SEED_OFFSET = 10_007  # eval batches come from their own stream, fixed across evals

Loss = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
"""A backend's loss of a batch: (model as called, inputs, targets) -> mean loss."""
WriteWeights = Callable[[tuple[Slot, ...], TrainingState], Path]
"""A backend's save: write its weights and `state` into each slot (once into a place two
slots share, run_folder.py's table); returns where the first went."""


@dataclass(frozen=True)
class TokenFiles:
    """The token streams a run trains and evaluates on, and the vocabulary they index."""

    train: Path
    val: Path
    dtype: str
    vocab_size: int
    train_mask: Path | None = None
    """One uint8 per token of `train`, 1 where it is a target (see data/batches.py)."""
    val_mask: Path | None = None


@dataclass
class Run:
    """Everything one training run works with, assembled once; iter_num and best move."""

    train: TrainConfig
    precision: Precision
    ranks: Ranks
    model: nn.Module
    """The bare model: evaluated, saved, checked for identical replicas."""
    forward: Forward
    """The model as trained: wrapped in DDP under a launcher, compiled where asked."""
    optimizer: Optimizers
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    files: TokenFiles
    loss: Loss
    write: WriteWeights
    description: str
    """What trains, as the run's first line says it: "training 12.34M parameters"."""
    iter_num: int = 0
    best_val_loss: float = math.inf

    @cached_property
    def parameters(self) -> list[nn.Parameter]:
        """What the optimizers train and the gradient clip sees."""
        return [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    @property
    def tokens_per_step(self) -> int:
        data = self.train.data
        per_rank = data.batch_size * self.sampler.block_size * data.grad_accum_steps
        return per_rank * self.ranks.world_size


@dataclass(frozen=True)
class TrainSummary:
    iter_num: int
    best_val_loss: float
    last_val_loss: float | None
    out_dir: Path


@contextlib.contextmanager
def training_session(train_config: TrainConfig, ranks: Ranks) -> Generator[Precision]:
    """Where a run computes, inside its process group, holding its out_dir alone."""
    runtime = train_config.runtime
    precision = precision_for(ranks, resolve_precision(runtime.device, runtime.dtype))
    with process_group(ranks, precision.device):
        lock = run_folder.out_dir_lock(runtime.out_dir) if ranks.is_main else None
        with lock or contextlib.nullcontext():
            yield precision


# --- assembling a run: what every backend needs around its model -----------------------


def assemble_run(
    train: TrainConfig,
    precision: Precision,
    ranks: Ranks,
    *,
    model: nn.Module,
    files: TokenFiles,
    block_size: int,
    loss: Loss,
    write: WriteWeights,
    description: str,
    resume: TrainingState | None,
    resume_source: str,
    compile_model: bool = False,
) -> Run:
    """Optimizer, grad scaler, batches, DDP and the resumed state around a built model.

    The backend seeds (`seed_everything(runtime.seed)`) before it builds the model, so
    every rank starts from the same weights; from here on each rank draws its own dropout
    masks and batches.
    """
    runtime = train.runtime
    for path in (files.train, files.val):
        check_token_ids(path, files.dtype, files.vocab_size)
    model.to(precision.device)
    model.train()
    run = Run(
        train=train,
        precision=precision,
        ranks=ranks,
        model=model,
        forward=Forward(model),
        optimizer=build_optimizers(model, train, precision),
        scaler=torch.amp.GradScaler(enabled=precision.needs_grad_scaler),
        sampler=BatchSampler(
            files.train,
            files.dtype,
            block_size,
            train.data.batch_size,
            mode=train.data.sampler,
            seed=runtime.seed,
            rank=ranks.rank,
            world_size=ranks.world_size,
            device=precision.device,
            mask=files.train_mask,
        ),
        files=files,
        loss=loss,
        write=write,
        description=description,
    )
    seed_everything(runtime.seed + ranks.rank)
    if resume is not None:
        _restore(run, resume, resume_source)
    run.forward = training_forward(model, precision, ranks, compile_model=compile_model)
    return run


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    """The names of the parameters that train, in optimizer order."""
    return tuple(name for name, parameter in model.named_parameters() if parameter.requires_grad)


def _restore(run: Run, state: TrainingState, source: str) -> None:
    """Continue from `state`: optimizer, scaler, step, best loss and this rank's streams.

    If `source` was saved by another number of ranks, the streams restart from their
    seeds and rank 0 says so.
    """
    saved, configured = saved_optimizer(state.optimizer), run.train.optim.name
    if saved != configured:
        raise CheckpointError(
            f"{source} was trained with train.optim.name = '{saved}' but the config says "
            f"'{configured}'; set name = '{saved}' to resume it, or move the file away to "
            f"start fresh with {configured}"
        )
    try:
        run.optimizer.load_state_dict(state.optimizer)
    except (KeyError, ValueError, TypeError, RuntimeError):
        # torch names no file; a state for other parameters or a damaged one lands here.
        raise CheckpointError(
            f"the optimizer state in {source} does not fit this model's parameters; the file "
            "is damaged or from another run: delete it to start fresh or restore a backup"
        ) from None
    if state.scaler:
        run.scaler.load_state_dict(state.scaler)
    ranks = run.ranks
    if len(state.sampler) == ranks.world_size == len(state.rng):
        run.sampler.load_state_dict(state.sampler[ranks.rank])
        device.restore_rng(state.rng[ranks.rank])
    elif ranks.is_main:
        print(
            f"resume: {source} holds batch streams for {len(state.sampler)} rank(s), this "
            f"run has {ranks.world_size}; streams restart from their seeds (not an exact replay)"
        )
    run.iter_num, run.best_val_loss = state.iter_num, state.best_val_loss


def train(run: Run) -> TrainSummary:
    """Train until max_iters (or evaluate once with eval_only); returns where it ended."""
    runtime = run.train.runtime
    # Resumed means past step 0: every save follows a step (or ends a max_iters = 0 run,
    # which simply evaluates again).
    start = run.iter_num
    last_val: float | None = None
    with RunReporter.of_run(
        runtime, start_step=start, tokens_per_step=run.tokens_per_step, enabled=run.ranks.is_main
    ) as reporter:
        reporter.announce(
            run.description,
            run.precision,
            resumed=start > 0,
            world_size=run.ranks.world_size,
            model=run.model,
        )
        if runtime.eval_only:
            losses = estimate_loss(run)
            reporter.evaluation(start, train_loss=losses["train"], val_loss=losses["val"])
            return TrainSummary(start, run.best_val_loss, losses["val"], runtime.out_dir)

        with stop_requests() as stop_requested:
            while run.iter_num < runtime.max_iters:
                lr = learning_rate_at(run.iter_num, run.train.optim, run.train.schedule)
                step = optimizer_step(run, lr)
                run.iter_num += 1
                reporter.advance()

                if run.iter_num % runtime.log_interval == 0:
                    reporter.log_step(
                        run.iter_num,
                        loss=step.loss.item(),  # with the norm, the only host syncs of a step
                        lr=lr,
                        grad_norm=None if step.grad_norm is None else step.grad_norm.item(),
                    )

                # Right after the step, before the stop check: a run stopped at an eval
                # boundary has evaluated and saved it, as an uninterrupted run does. The
                # evaluation at max_iters is the final one below.
                if run.iter_num % runtime.eval_interval == 0 and run.iter_num < runtime.max_iters:
                    with reporter.evaluating():  # not part of throughput or time per step
                        last_val = _evaluate_and_save(run, reporter, (run_folder.LAST,))

                # Ranks may see Ctrl-C at different steps; they must stop at the same one.
                if any_rank(stop_requested(), run.precision.device):
                    saved = save(run, run_folder.LAST)
                    reporter.interrupted(run.iter_num, saved)
                    raise SavedAndStopped(saved)

            if run.iter_num > start or start == 0:
                with reporter.evaluating():
                    last_val = _evaluate_and_save(run, reporter, run_folder.END_SLOTS)
            else:  # resumed at max_iters: only the final slot may be missing
                save(run, run_folder.FINAL)

        _check_replicas(run, reporter)
        reporter.done(run.iter_num, run.best_val_loss, runtime.out_dir)
    return TrainSummary(run.iter_num, run.best_val_loss, last_val, runtime.out_dir)


def _check_replicas(run: Run, reporter: RunReporter) -> None:
    """Under a launcher, every rank must end with the same weights."""
    if not run.ranks.is_distributed:
        return
    if not replicas_identical(run.parameters):
        raise RuntimeError("DDP replicas diverged: ranks hold different weights")
    reporter.say(f"all {run.ranks.world_size} ranks hold identical weights")


@dataclass(frozen=True)
class StepResult:
    """One optimizer step's numbers, as device tensors (reading one syncs the host)."""

    loss: torch.Tensor
    """The mean loss over the step's micro-batches."""
    grad_norm: torch.Tensor | None
    """The gradients' total norm before clipping; None when grad_clip = 0 (never measured)."""


def optimizer_step(run: Run, lr: float) -> StepResult:
    """Accumulate gradients over fresh micro-batches, clip once, step once at `lr`
    (AdamW's learning rate; Muon's follows in proportion)."""
    run.optimizer.set_learning_rate(lr)
    accum = run.train.data.grad_accum_steps
    total = torch.zeros((), device=run.precision.device)
    for micro in range(accum):
        x, y = run.sampler.next_batch()
        last = micro == accum - 1  # only the last micro-step all-reduces gradients
        sync = contextlib.nullcontext() if last else run.forward.without_gradient_sync()
        with sync, run.precision.autocast():
            loss = run.loss(run.forward, x, y) / accum
        total += loss.detach()
        scaled = run.scaler.scale(loss)
        assert isinstance(scaled, torch.Tensor)  # scale() maps a tensor to a tensor
        torch.autograd.backward(scaled)  # typed, unlike Tensor.backward in torch's stubs
    grad_norm: torch.Tensor | None = None
    if run.train.optim.grad_clip > 0:
        run.optimizer.unscale_gradients(run.scaler)
        grad_norm = nn.utils.clip_grad_norm_(run.parameters, run.train.optim.grad_clip)
    run.optimizer.step(run.scaler)
    run.scaler.update()
    run.optimizer.zero_grad()
    return StepResult(total, grad_norm)


@torch.no_grad()
def estimate_loss(run: Run) -> dict[str, float]:
    """Mean loss over eval_iters batches of each split, always the same batches.

    Each rank evaluates its own batches and the losses are averaged over ranks, so all
    agree on what is "best". It evaluates the bare model: it needs no gradient sync (DDP),
    and a compiled forward would compile a second graph for no_grad, which on a CPU takes
    longer than all the evaluations of a small run.
    """
    runtime = run.train.runtime
    forward = run.model
    run.model.eval()
    losses: dict[str, float] = {}
    files = run.files
    for split, path, mask in (
        ("train", files.train, files.train_mask),
        ("val", files.val, files.val_mask),
    ):
        sampler = run.sampler.over(path, seed=runtime.seed + EVAL_SEED_OFFSET, mask=mask)
        total = torch.zeros((), device=run.precision.device)
        for _ in range(runtime.eval_iters):
            x, y = sampler.next_batch()
            with run.precision.autocast():
                total += run.loss(forward, x, y).float()
        losses[split] = mean_across_ranks(total.item() / runtime.eval_iters, run.precision.device)
    run.model.train()
    return losses


def _evaluate_and_save(run: Run, reporter: RunReporter, slots: tuple[Slot, ...]) -> float:
    """Evaluate; save the best slot when validation improved, then `slots` (the last slot,
    and at max_iters the final one too).

    Best goes first: a run killed between the two writes resumes from the older last,
    evaluates this step again and rewrites both, whereas last first would leave a last
    that claims a best loss the best slot does not hold, for good.
    """
    losses = estimate_loss(run)
    reporter.evaluation(run.iter_num, train_loss=losses["train"], val_loss=losses["val"])
    improved = losses["val"] < run.best_val_loss
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    if improved or run.train.runtime.always_save_checkpoint:
        save(run, run_folder.BEST)
    save(run, *slots)
    return losses["val"]


def save(run: Run, *slots: Slot) -> Path:
    """Write the run as of the last finished step into `slots`; returns where the first
    went. Every rank's batch stream and RNG are gathered (a collective, so all ranks call
    this); only rank 0 writes."""
    samplers = gather_state(run.sampler.state_dict())
    rngs = gather_state(device.capture_rng())
    state = TrainingState(
        iter_num=run.iter_num,
        best_val_loss=run.best_val_loss,
        optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        rng=rngs,
        sampler=samplers,
        trainable=trainable_names(run.model),
    )
    if not run.ranks.is_main:
        return run.train.runtime.out_dir
    return run.write(slots, state)
