"""Fine-tune a pretrained Hugging Face model with LoRA, in the from-scratch loop's shape.

setup (device, dataset meta, tokenizer, packed tokens, base model + adapters, optimizer,
resume) -> train/driver.py's run_loop {evaluate and save adapters every eval_interval;
one optimizer step over grad_accum_steps fresh micro-batches; Ctrl-C saves adapters/last
and exits} -> adapters/final, optional merged model. The loop, learning-rate schedule,
reporter (progress bar, log lines, TensorBoard tags) and batch sampler are the ones the
from-scratch trainer uses; what differs is how the model is built, stepped and saved.

Under torchrun or `accelerate launch` the same code runs once per rank, with the
from-scratch trainer's rules: the peft model is wrapped in DistributedDataParallel (only
its trainable parameters take part), each rank draws its own batches, gradients are
averaged on the last micro-step of an accumulation, evaluation losses are averaged over
ranks, and only rank 0 writes (packed tokens, adapters, tokenizer, meta.json, logs).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the conventional name
from torch.nn.parallel import DistributedDataParallel

from ml_playground import atomic
from ml_playground.config import ExperimentConfig, HFModelConfig, PeftConfig
from ml_playground.data.batches import BatchSampler
from ml_playground.data.packing import PackedDataset, pack_dataset
from ml_playground.data.records import TOKENIZER_DIR, DatasetMeta, read_dataset_meta
from ml_playground.device import Precision, resolve_precision, seed_everything
from ml_playground.distributed import (
    Ranks,
    mean_across_ranks,
    precision_for,
    process_group,
    rank_zero_first,
    ranks_from_env,
    replicas_identical,
)
from ml_playground.errors import CheckpointError, DataError
from ml_playground.finetune import adapters
from ml_playground.finetune.adapters import RunMeta, TrainingState
from ml_playground.finetune.hub import ModelSource, Tokenizer, load_tokenizer
from ml_playground.finetune.inference import load_trained
from ml_playground.finetune.model import (
    ADAPTER_CONFIG,
    apply_lora,
    enable_gradient_checkpointing,
    fit_embeddings,
    load_adapters,
    load_base,
    merge_adapters,
    weights_dtype,
)
from ml_playground.train.driver import Steps, run_loop, set_learning_rate
from ml_playground.train.loop import EVAL_SEED_OFFSET
from ml_playground.train.reporting import RunReporter
from ml_playground.train.streams import gather_streams, restore_streams


@dataclass(frozen=True)
class FinetuneSummary:
    iter_num: int
    best_val_loss: float
    last_val_loss: float | None
    out_dir: Path


def train_lora(config: ExperimentConfig, *, ranks: Ranks | None = None) -> FinetuneSummary:
    """Fine-tune (or resume fine-tuning) the model the config describes.

    `ranks` defaults to what the launcher (torchrun, accelerate launch) put in the
    environment.
    """
    ranks = ranks or ranks_from_env()
    runtime = config.train.runtime
    precision = precision_for(ranks, resolve_precision(runtime.device, runtime.dtype))
    with process_group(ranks, precision.device):
        return _train(_build_run(config, precision, ranks))


def _train(run: _Run) -> FinetuneSummary:
    config = run.config
    runtime = config.train.runtime
    evaluate = _evaluator(run)
    start = run.iter_num
    with RunReporter(
        runtime.out_dir,
        total_steps=runtime.max_iters,
        start_step=start,
        tensorboard=runtime.tensorboard_enabled,
        enabled=run.ranks.is_main,
    ) as reporter:
        trainable = sum(parameter.numel() for parameter in run.parameters)
        total = sum(parameter.numel() for parameter in run.model.parameters())
        reporter.say(
            f"fine-tuning {run.hf.model_name}: {trainable / 1e6:.2f}M of {total / 1e6:.1f}M "
            f"parameters train ({'LoRA' if run.lora else 'all weights'}) on "
            f"{run.precision.device} ({runtime.dtype}); {run.tokens_per_step:,} tokens per "
            f"optimizer step; {f'resuming at step {start}' if run.resumed else 'fresh start'}"
        )
        if runtime.eval_only:
            losses = evaluate()
            reporter.evaluation(start, train_loss=losses["train"], val_loss=losses["val"])
            return FinetuneSummary(start, run.best_val_loss, losses["val"], runtime.out_dir)

        last_val = run_loop(
            run,
            Steps(
                step=lambda lr: _optimizer_step(run, lr),
                evaluate=evaluate,
                save_last=lambda: _save(run, adapters.LAST),
                save_best=lambda: _save(run, adapters.BEST),
            ),
            train=config.train,
            reporter=reporter,
            tokens_per_step=run.tokens_per_step,
            device=run.precision.device,
            resumed=run.resumed,
        )
        if run.iter_num >= runtime.max_iters:
            _save(run, adapters.FINAL)
        if run.ranks.is_distributed:
            if not replicas_identical(run.parameters):
                raise RuntimeError("DDP replicas diverged: ranks hold different weights")
            reporter.say(f"all {run.ranks.world_size} ranks hold identical weights")
        if run.hf.save_merged and run.ranks.is_main:
            reporter.say(f"merged model written to {_write_merged(config, run.hf)}")
        reporter.say(
            f"done: step {run.iter_num}, best val loss {run.best_val_loss:.4f}; adapters in "
            f"{runtime.out_dir / adapters.ADAPTERS_DIR}"
        )
        return FinetuneSummary(run.iter_num, run.best_val_loss, last_val, runtime.out_dir)


@dataclass
class _Run:
    """Everything the loop works with, assembled once; iter_num and best_val_loss move."""

    config: ExperimentConfig
    hf: HFModelConfig
    lora: bool
    precision: Precision
    model: nn.Module
    """The bare (peft) model: evaluated and saved as is."""
    ddp: DistributedDataParallel | None
    """The model as trained under a launcher; None in a single process."""
    parameters: list[nn.Parameter]
    names: tuple[str, ...]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    packed: PackedDataset
    block_size: int
    tokens_per_step: int
    ranks: Ranks
    resumed: bool
    iter_num: int = 0
    best_val_loss: float = math.inf


def _build_run(config: ExperimentConfig, precision: Precision, ranks: Ranks) -> _Run:
    """Dataset, tokenizer, tokens, model and optimizer; resumed from adapters/last."""
    train, runtime = config.train, config.train.runtime
    hf = train.hf_model
    assert hf is not None  # the pipeline only sends configs with [train.hf_model] here
    peft = train.peft or PeftConfig()
    seed_everything(runtime.seed)  # the same fresh adapters on every rank
    dataset_dir = train.data.dataset_dir
    meta = read_dataset_meta(dataset_dir)
    _check_dataset_matches(meta, hf, dataset_dir)
    tokenizer = load_tokenizer(ModelSource.local(dataset_dir / TOKENIZER_DIR))
    last = adapters.adapters_dir(runtime.out_dir, adapters.LAST)
    resume = adapters.load_state(last) if adapters.has_state(last) else None
    run_meta = RunMeta(
        base_model=hf.model_name,
        revision=hf.revision,
        vocab_size=len(tokenizer),
        structure_tokens=meta.structure_tokens,
        added_tokens=meta.added_tokens,
        doc_separator=meta.doc_separator,
        record_opening=meta.record_opening,
        record_closing=meta.record_closing,
        stop_tokens=meta.stop_tokens,
        lora=peft.enabled,
    )
    if resume is not None:
        _check_same_run(run_meta, runtime.out_dir)
    # Rank 0 tokenizes; the other ranks then find its packed files and only read them.
    with rank_zero_first():
        packed = pack_dataset(dataset_dir, tokenizer, runtime.out_dir, separator=meta.doc_separator)
    model = _build_model(
        hf,
        peft,
        tokenizer,
        meta,
        resume_from=last if resume else None,
        dtype=weights_dtype(hf, runtime),
        announce=ranks.is_main,
    )
    model.to(precision.device)
    model.train()
    named = [
        (name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad
    ]
    parameters = [parameter for _, parameter in named]
    block_size = train.block_size
    run = _Run(
        config=config,
        hf=hf,
        lora=peft.enabled,
        precision=precision,
        model=model,
        parameters=parameters,
        ddp=None,
        names=tuple(name for name, _ in named),
        optimizer=_optimizer(parameters, config),
        scaler=torch.amp.GradScaler(enabled=precision.needs_grad_scaler),
        sampler=BatchSampler(
            packed.train,
            packed.dtype,
            block_size,
            train.data.batch_size,
            mode=train.data.sampler,
            seed=runtime.seed,
            rank=ranks.rank,
            world_size=ranks.world_size,
            device=precision.device,
        ),
        packed=packed,
        block_size=block_size,
        tokens_per_step=train.data.batch_size
        * block_size
        * train.data.grad_accum_steps
        * ranks.world_size,
        ranks=ranks,
        resumed=resume is not None,
    )
    # Dropout masks differ per rank, like the data each rank sees.
    seed_everything(runtime.seed + ranks.rank)
    if ranks.is_distributed:
        # DDP all-reduces the gradients of the parameters that require them, which are
        # exactly the adapters (every one is used in every forward pass, so DDP needs no
        # search for unused parameters); the frozen base stays out of the reduction. Its
        # buffers (rotary frequencies) are constants loaded alike on every rank, so they
        # are synced once at start-up but not before each forward pass.
        device_ids = [precision.device.index] if precision.device.type == "cuda" else None
        run.ddp = DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    if resume is not None:
        _restore(run, resume, last)
    if ranks.is_main:
        # Sampling and export read the tokenizer and meta from out_dir, never dataset_dir.
        adapters.copy_tokenizer(dataset_dir / TOKENIZER_DIR, runtime.out_dir)
        run_meta.write(runtime.out_dir)
    return run


def _build_model(
    hf: HFModelConfig,
    peft: PeftConfig,
    tokenizer: Tokenizer,
    meta: DatasetMeta,
    *,
    resume_from: Path | None,
    dtype: torch.dtype,
    announce: bool,
) -> nn.Module:
    """The trainable model: base + fresh or resumed adapters, or the whole (resumed) model."""
    if not peft.enabled and resume_from is not None:
        model = load_base(hf, ModelSource.local(resume_from), dtype=dtype)
    else:
        model = load_base(hf, ModelSource.from_config(hf), dtype=dtype)
        fit_embeddings(model, len(tokenizer), init_new_rows=resume_from is None)
    model.config.use_cache = False  # pyright: ignore[reportUnknownMemberType] - untyped library; no KV cache while training
    if hf.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not peft.enabled:
        return model
    if resume_from is not None:
        if announce:
            _announce_saved_lora(peft, resume_from)
        return load_adapters(model, resume_from, trainable=True)
    new_ids = tokenizer.convert_tokens_to_ids(list(meta.structure_tokens))
    return apply_lora(model, peft, hf.model_name, new_ids)


def _announce_saved_lora(peft: PeftConfig, folder: Path) -> None:
    """Resumed adapters keep the LoRA settings they were created with; say where they differ."""
    try:
        saved: object = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # loading the adapters reports a damaged folder properly
    if not isinstance(saved, dict):
        return
    fields = cast(dict[str, object], saved)
    for key in ("r", "lora_alpha", "lora_dropout", "bias"):
        configured: object = getattr(peft, key)
        if key in fields and fields[key] != configured:
            print(
                f"resume: train.peft.{key} = {fields[key]!r} from {folder} "
                f"(config says {configured!r})"
            )


def _optimizer(parameters: list[nn.Parameter], config: ExperimentConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, vectors (biases, norms) do not, as in the from-scratch GPT."""
    optim = config.train.optim
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=optim.learning_rate,
        betas=(optim.beta1, optim.beta2),
    )


def _restore(run: _Run, state: TrainingState, folder: Path) -> None:
    if state.trainable != run.names:
        raise CheckpointError(
            f"the adapters in {folder} train other parameters than this config "
            "([train.peft] changed); move the folder away to start fresh"
        )
    run.optimizer.load_state_dict(state.optimizer)
    if state.scaler:
        run.scaler.load_state_dict(state.scaler)
    restore_streams(run.sampler, state.sampler, state.rng, run.ranks, source=str(folder))
    run.iter_num, run.best_val_loss = state.iter_num, state.best_val_loss


def _save(run: _Run, name: str) -> Path:
    """Write adapters and training state as of the last finished step; every rank's batch
    stream and RNG are gathered (a collective, so all ranks call this), only rank 0 writes."""
    streams = gather_streams(run.sampler)
    out_dir = run.config.train.runtime.out_dir
    if not run.ranks.is_main:
        return adapters.adapters_dir(out_dir, name)
    state = TrainingState(
        iter_num=run.iter_num,
        best_val_loss=run.best_val_loss,
        optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        rng=streams.rngs,
        sampler=streams.samplers,
        trainable=run.names,
    )
    return adapters.save_adapters(out_dir, name, run.model, state)


def next_token_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting y from x; computed in float32 whatever the autocast."""
    logits: torch.Tensor = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def _optimizer_step(run: _Run, lr: float) -> torch.Tensor:
    """Accumulate gradients over fresh micro-batches, clip once, step once at `lr`."""
    set_learning_rate(run.optimizer, lr)
    optim = run.config.train.optim
    accum = run.config.train.data.grad_accum_steps
    ddp = run.ddp
    trained: nn.Module = run.model if ddp is None else ddp
    total = torch.zeros((), device=run.precision.device)
    for micro in range(accum):
        x, y = run.sampler.next_batch()
        # DDP all-reduces gradients in backward; only the last micro-step needs it.
        last = micro == accum - 1
        no_sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
        with no_sync, run.precision.autocast():
            loss = next_token_loss(trained, x, y) / accum
        total += loss.detach()
        scaled = run.scaler.scale(loss)
        assert isinstance(scaled, torch.Tensor)  # scale() maps a tensor to a tensor
        torch.autograd.backward(scaled)
    if optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.parameters, optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _evaluator(run: _Run) -> Callable[[], dict[str, float]]:
    """Mean loss over eval_iters batches of each split, always the same batches.

    Evaluation needs no gradient sync, so it runs the bare model; each rank evaluates its
    own batches and the losses are averaged over ranks, so all agree on what is "best".
    """
    data, runtime = run.config.train.data, run.config.train.runtime
    files = {"train": run.packed.train, "val": run.packed.val}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        run.model.eval()
        losses: dict[str, float] = {}
        for split, path in files.items():
            sampler = BatchSampler(
                path,
                run.packed.dtype,
                run.block_size,
                data.batch_size,
                seed=runtime.seed + EVAL_SEED_OFFSET,
                rank=run.ranks.rank,
                world_size=run.ranks.world_size,
                device=run.precision.device,
            )
            total = torch.zeros((), device=run.precision.device)
            for _ in range(runtime.eval_iters):
                x, y = sampler.next_batch()
                with run.precision.autocast():
                    total += next_token_loss(run.model, x, y)
            losses[split] = mean_across_ranks(
                total.item() / runtime.eval_iters, run.precision.device
            )
        run.model.train()
        return losses

    return evaluate


def _check_dataset_matches(meta: DatasetMeta, hf: HFModelConfig, dataset_dir: Path) -> None:
    if (meta.base_model, meta.revision) != (hf.model_name, hf.revision):
        raise DataError(
            f"dataset {dataset_dir} was prepared with the tokenizer of {meta.base_model} but "
            f"train.hf_model.model_name is {hf.model_name}; run `ml-playground prepare` again"
        )


def _check_same_run(wanted: RunMeta, out_dir: Path) -> None:
    saved = RunMeta.read(out_dir)
    if (saved.base_model, saved.vocab_size, saved.lora) != (
        wanted.base_model,
        wanted.vocab_size,
        wanted.lora,
    ):
        raise CheckpointError(
            f"{out_dir} holds a run of {saved.base_model} (vocabulary {saved.vocab_size}, "
            f"{'LoRA' if saved.lora else 'all weights'}) but the config asks for "
            f"{wanted.base_model} (vocabulary {wanted.vocab_size}, "
            f"{'LoRA' if wanted.lora else 'all weights'}); use another out_dir or move it away"
        )


def _write_merged(config: ExperimentConfig, hf: HFModelConfig) -> Path:
    """out_dir/merged: the sampled adapters folded into the base, as a transformers model."""
    runtime = config.train.runtime
    trained = load_trained(
        runtime.out_dir, hf, dtype=weights_dtype(hf, runtime), require_adapters=True
    )
    merged = merge_adapters(trained.model)
    target = runtime.out_dir / adapters.MERGED_DIR
    with atomic.atomic_directory(target) as staging:
        merged.save_pretrained(str(staging))  # pyright: ignore[reportUnknownMemberType] - untyped library
        trained.tokenizer.save_pretrained(str(staging))
    return target
