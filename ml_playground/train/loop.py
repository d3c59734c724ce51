"""Train a GPT from scratch: one loop you can read top to bottom.

setup (device, dataset meta, model, optimizer, resume) -> repeat {evaluate and checkpoint
every eval_interval; one optimizer step over grad_accum_steps fresh micro-batches} ->
final evaluation and checkpoint. Ctrl-C finishes the current step, writes ckpt_last.pt and
re-raises KeyboardInterrupt so the CLI exits with 130.

Under torchrun the same loop runs once per rank with DistributedDataParallel: each rank
draws its own batches, gradients are averaged on the last micro-step of an accumulation,
evaluation losses are averaged over ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ml_playground import atomic
from ml_playground.config import ExperimentConfig, ModelConfig
from ml_playground.data.batches import BatchSampler
from ml_playground.data.token_dataset import DatasetMeta, read_meta
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.device import Precision, resolve_precision, seed_everything
from ml_playground.distributed import (
    Ranks,
    mean_across_ranks,
    precision_for,
    process_group,
    ranks_from_env,
    replicas_identical,
)
from ml_playground.errors import CheckpointError, DataError
from ml_playground.model.gpt import GPT, GPTConfig
from ml_playground.train import checkpoint
from ml_playground.train.checkpoint import Checkpoint
from ml_playground.train.driver import Steps, run_loop, set_learning_rate
from ml_playground.train.reporting import RunReporter
from ml_playground.train.streams import gather_streams, restore_streams

OUT_META = "meta.json"
EVAL_SEED_OFFSET = 10_007  # eval batches come from their own stream, fixed across evals


@dataclass(frozen=True)
class TrainSummary:
    iter_num: int
    best_val_loss: float
    last_val_loss: float | None
    out_dir: Path
    model: GPT


def train_gpt(config: ExperimentConfig, *, ranks: Ranks | None = None) -> TrainSummary:
    """Train (or resume) the GPT the config describes; returns where it ended.

    `ranks` defaults to what the launcher (torchrun) put in the environment.
    """
    ranks = ranks or ranks_from_env()
    runtime = config.train.runtime
    precision = precision_for(ranks, resolve_precision(runtime.device, runtime.dtype))
    with process_group(ranks, precision.device):
        return _train(_build_run(config, precision, ranks))


def _train(run: _Run) -> TrainSummary:
    config = run.config
    runtime = config.train.runtime
    evaluate = _evaluator(run)
    start = run.iter_num
    with RunReporter(
        runtime.out_dir,
        total_steps=runtime.max_iters,
        start_step=start,
        tensorboard=runtime.tensorboard_enabled,
        enabled=run.is_writer,
    ) as reporter:
        reporter.say(
            f"training {run.model.num_parameters() / 1e6:.2f}M parameters on "
            f"{run.precision.device} ({runtime.dtype}); {run.tokens_per_step:,} tokens per "
            f"optimizer step; {f'resuming at step {start}' if run.resumed else 'fresh start'}"
        )
        if runtime.eval_only:
            losses = evaluate()
            reporter.evaluation(start, train_loss=losses["train"], val_loss=losses["val"])
            return TrainSummary(start, run.best_val_loss, losses["val"], runtime.out_dir, run.model)

        last_val = run_loop(
            run,
            Steps(
                step=lambda lr: _optimizer_step(run, lr),
                evaluate=evaluate,
                save_last=lambda: _save(run, checkpoint.LAST),
                save_best=lambda: _save(run, checkpoint.BEST),
            ),
            train=config.train,
            reporter=reporter,
            tokens_per_step=run.tokens_per_step,
            device=run.precision.device,
            resumed=run.resumed,
        )
        if run.ranks.is_distributed:
            if not replicas_identical(run.model):
                raise RuntimeError("DDP replicas diverged: ranks hold different weights")
            reporter.say(f"all {run.ranks.world_size} ranks hold identical weights")
        reporter.say(
            f"done: step {run.iter_num}, best val loss {run.best_val_loss:.4f}; "
            f"checkpoints in {runtime.out_dir}"
        )
        return TrainSummary(run.iter_num, run.best_val_loss, last_val, runtime.out_dir, run.model)


@dataclass
class _Run:
    """Everything the loop works with, assembled once; iter_num and best_val_loss move."""

    config: ExperimentConfig
    precision: Precision
    meta: DatasetMeta
    model_config: GPTConfig
    block_size: int
    model: GPT
    forward_model: Callable[..., torch.Tensor]
    ddp: DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    tokens_per_step: int
    ranks: Ranks
    resumed: bool
    iter_num: int = 0
    best_val_loss: float = math.inf

    @property
    def is_writer(self) -> bool:
        return self.ranks.is_main


def _build_run(config: ExperimentConfig, precision: Precision, ranks: Ranks) -> _Run:
    """Device, dataset meta, model, optimizer and batches; restored from ckpt_last.pt if any."""
    train, runtime = config.train, config.train.runtime
    seed_everything(runtime.seed)  # the same initial weights on every rank
    meta_path = train.data.dataset_dir / train.data.meta_file
    meta = read_meta(meta_path)
    last_path = runtime.out_dir / checkpoint.LAST
    resume = checkpoint.load(last_path) if last_path.exists() else None
    if resume is not None:
        _check_same_tokenizer(meta, meta_path, resume, last_path)
    model_config = _model_config(train.model, meta, resume, announce=ranks.is_main)
    block_size = min(train.block_size, model_config.block_size)
    model = GPT(model_config)
    optimizer = model.configure_optimizer(
        weight_decay=train.optim.weight_decay,
        learning_rate=train.optim.learning_rate,
        betas=(train.optim.beta1, train.optim.beta2),
        device_type=precision.device_type,
    )
    sampler = BatchSampler(
        train.data.dataset_dir / train.data.train_bin,
        meta.dtype,
        block_size,
        train.data.batch_size,
        mode=train.data.sampler,
        seed=runtime.seed,
        rank=ranks.rank,
        world_size=ranks.world_size,
        device=precision.device,
    )
    run = _Run(
        config=config,
        precision=precision,
        meta=meta,
        model_config=model_config,
        block_size=block_size,
        model=model,
        forward_model=model,
        ddp=None,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(enabled=precision.needs_grad_scaler),
        sampler=sampler,
        tokens_per_step=train.data.batch_size
        * block_size
        * train.data.grad_accum_steps
        * ranks.world_size,
        ranks=ranks,
        resumed=resume is not None,
    )
    model.to(precision.device)
    # Dropout masks differ per rank, like the data each rank sees.
    seed_everything(runtime.seed + ranks.rank)
    if resume is not None:
        _restore(run, resume)
    wrapped: nn.Module = model
    if ranks.is_distributed:
        device_ids = [precision.device.index] if precision.device.type == "cuda" else None
        run.ddp = DistributedDataParallel(model, device_ids=device_ids)
        wrapped = run.ddp
    run.forward_model = _maybe_compile(wrapped, enabled=runtime.compile, precision=precision)
    if run.is_writer:
        # Sampling and export read the tokenizer from out_dir, never from dataset_dir.
        runtime.out_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(runtime.out_dir / OUT_META, meta.to_json())
    return run


def _restore(run: _Run, resume: Checkpoint) -> None:
    run.model.load_state_dict(dict(resume.model))
    run.optimizer.load_state_dict(resume.optimizer)
    if resume.scaler:
        run.scaler.load_state_dict(resume.scaler)
    restore_streams(
        run.sampler,
        resume.sampler.get("per_rank", []),
        resume.rng.get("per_rank", []),
        run.ranks,
        source="the checkpoint",
    )
    run.iter_num, run.best_val_loss = resume.iter_num, resume.best_val_loss


def _save(run: _Run, name: str) -> Path:
    """Write a checkpoint as of the last finished step; every rank's batch stream and RNG
    are gathered (a collective, so all ranks call this), and only rank 0 writes."""
    streams = gather_streams(run.sampler)
    path = run.config.train.runtime.out_dir / name
    if not run.is_writer:
        return path
    checkpoint.save(
        path,
        Checkpoint(
            model=run.model.state_dict(),
            optimizer=run.optimizer.state_dict(),
            scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
            iter_num=run.iter_num,
            best_val_loss=run.best_val_loss,
            model_args=run.model_config.to_dict(),
            config=run.config.model_dump(mode="json"),
            tokenizer=run.meta.tokenizer.to_json(),
            rng={"per_rank": streams.rngs},
            sampler={"per_rank": streams.samplers},
        ),
    )
    return path


def _optimizer_step(run: _Run, lr: float) -> torch.Tensor:
    """Accumulate gradients over fresh micro-batches, clip once, step once at `lr`."""
    set_learning_rate(run.optimizer, lr)
    optim = run.config.train.optim
    accum = run.config.train.data.grad_accum_steps
    total = torch.zeros((), device=run.precision.device)
    for micro in range(accum):
        x, y = run.sampler.next_batch()
        # DDP all-reduces gradients in backward; only the last micro-step needs it.
        ddp = run.ddp
        last = micro == accum - 1
        no_sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
        with no_sync, run.precision.autocast():
            loss = run.forward_model(x, y) / accum
        total += loss.detach()
        scaled = run.scaler.scale(loss)
        assert isinstance(scaled, torch.Tensor)  # scale() maps a tensor to a tensor
        torch.autograd.backward(scaled)  # typed, unlike Tensor.backward in torch's stubs
    if optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _evaluator(run: _Run) -> Callable[[], dict[str, float]]:
    """Mean loss over eval_iters batches of each split, always the same batches."""
    data, runtime = run.config.train.data, run.config.train.runtime
    files = {"train": data.dataset_dir / data.train_bin, "val": data.dataset_dir / data.val_bin}
    # Evaluation needs no gradient sync, so distributed runs evaluate the bare model.
    forward_model = run.model if run.ranks.is_distributed else run.forward_model
    precision = run.precision

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        module = forward_model if isinstance(forward_model, nn.Module) else None
        if module is not None:
            module.eval()
        losses: dict[str, float] = {}
        for split, path in files.items():
            sampler = BatchSampler(
                path,
                run.meta.dtype,
                run.block_size,
                data.batch_size,
                seed=runtime.seed + EVAL_SEED_OFFSET,
                rank=run.ranks.rank,
                world_size=run.ranks.world_size,
                device=precision.device,
            )
            total = torch.zeros((), device=precision.device)
            for _ in range(runtime.eval_iters):
                x, y = sampler.next_batch()
                with precision.autocast():
                    total += forward_model(x, y).float()
            losses[split] = mean_across_ranks(total.item() / runtime.eval_iters, precision.device)
        if module is not None:
            module.train()
        return losses

    return evaluate


def _check_same_tokenizer(
    meta: DatasetMeta, meta_path: Path, resume: Checkpoint, ckpt_path: Path
) -> None:
    try:
        saved = TokenizerSpec.from_json(dict(resume.tokenizer), ckpt_path)
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    if saved != meta.tokenizer:
        raise CheckpointError(
            f"dataset {meta_path} uses tokenizer {meta.tokenizer.describe()} but checkpoint "
            f"{ckpt_path} was trained with {saved.describe()}; prepare the matching dataset "
            "or move the checkpoint away to train fresh"
        )


def _model_config(
    model: ModelConfig, meta: DatasetMeta, resume: Checkpoint | None, *, announce: bool
) -> GPTConfig:
    """Model arguments from the config, except that a resumed checkpoint's always win."""
    if model.vocab_size is not None and model.vocab_size < meta.vocab_size:
        raise DataError(
            f"train.model.vocab_size = {model.vocab_size} is smaller than the dataset's "
            f"vocabulary ({meta.vocab_size}); remove the key or raise it"
        )
    wanted = GPTConfig(
        vocab_size=model.vocab_size or meta.vocab_size,
        block_size=model.block_size,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_embd=model.n_embd,
        dropout=model.dropout,
        bias=model.bias,
    )
    if resume is None:
        return wanted
    saved = GPTConfig.from_dict(resume.model_args)
    for key, value in saved.to_dict().items():
        configured = wanted.to_dict().get(key)
        if configured != value and announce:
            print(f"resume: model.{key} = {value} from the checkpoint (config says {configured})")
    return saved


def _maybe_compile(model: nn.Module, *, enabled: bool, precision: Precision) -> Callable[..., Any]:
    """torch.compile where it works; otherwise say why and run eagerly."""
    if not enabled:
        return model
    if precision.device_type == "mps":
        print("compile: skipped, torch.compile does not support the MPS backend reliably")
        return model
    try:
        return torch.compile(model)
    except (RuntimeError, ImportError) as exc:  # e.g. no C++ compiler, unsupported Python
        print(f"compile: skipped, torch.compile failed ({exc}); running eagerly")
        return model
