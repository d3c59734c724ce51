"""Training throughput in float32 and bfloat16, and what bf16 does to the loss.

A step is what `ml_playground.train.loop` does with grad_accum_steps = 1: draw a batch from
the memmapped token file, forward under the precision's autocast, backward, clip, AdamW
step, zero the gradients. Each precision gets its own model and optimizer, built from the
same seed and fed the same batches, and the two step in alternation, so their speed ratio is
measured side by side and their losses can be compared after the same number of steps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.hardware import Matmul
from benchmarks.timing import Case, time_side_by_side
from ml_playground.config import OptimConfig
from ml_playground.data.batches import BatchSampler
from ml_playground.device import DTypeName, Precision, resolve_precision, seed_everything
from ml_playground.model.gpt import GPT, GPTConfig

PRECISIONS: tuple[DTypeName, ...] = ("float32", "bfloat16")
SEED = 1337
EVAL_SEED = SEED + 10_007  # the loop's eval offset: the same val batches for every model


@dataclass(frozen=True)
class TrainingSpec:
    name: str
    model: GPTConfig
    batch_size: int
    warmup_steps: int
    timed_steps: int
    vocab: str  # how the vocabulary was chosen, for the table

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.block_size

    def with_vocab(self, vocab_size: int, vocab: str) -> TrainingSpec:
        return replace(self, model=replace(self.model, vocab_size=vocab_size), vocab=vocab)

    def describe(self) -> str:
        m = self.model
        return (
            f"{m.n_layer}L {m.n_head}H {m.n_embd}d, T={m.block_size} B={self.batch_size}, "
            f"{self.vocab}"
        )


@dataclass(frozen=True)
class TokenFile:
    """A token file and what BatchSampler needs to read it."""

    path: Path
    dtype: str


@dataclass(frozen=True)
class TrainingResult:
    model: str
    dtype: DTypeName
    tokens_per_step: int
    steps: int  # all steps taken, warmup included; the val loss is after this many
    step_seconds: float  # median over the timed steps
    tokens_per_second: float
    flops_per_token: int
    matmul_flops_per_second: float  # same dtype, timed in the same rounds as the steps
    mfu: float  # achieved FLOP/s (flops_per_token * tokens/s) over the matmul's
    val_loss: float | None


class _Trainer:
    """One model, its optimizer and its batches, stepping in one precision."""

    def __init__(self, spec: TrainingSpec, train: TokenFile, dtype: DTypeName) -> None:
        self.precision: Precision = resolve_precision("cpu", dtype)
        seed_everything(SEED)
        self.model = GPT(spec.model)
        optim = OptimConfig()
        self.grad_clip = optim.grad_clip
        self.optimizer = self.model.configure_optimizer(
            weight_decay=optim.weight_decay,
            learning_rate=optim.learning_rate,
            betas=(optim.beta1, optim.beta2),
            device_type=self.precision.device_type,
        )
        self.sampler = BatchSampler(
            train.path, train.dtype, spec.model.block_size, spec.batch_size, seed=SEED
        )
        self.steps = 0

    def step(self) -> None:
        x, y = self.sampler.next_batch()
        with self.precision.autocast():
            loss = self.model(x, y)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves `closure` unannotated
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    def warm_up(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


def measure_training(
    spec: TrainingSpec,
    train: TokenFile,
    val: TokenFile | None,
    *,
    val_batches: int,
    matmul_size: int,
    matmul_repeats: int,
) -> list[TrainingResult]:
    """fp32 and bf16 trained side by side; val loss (in fp32) afterwards when `val` is given.

    MFU's denominator, a large matmul in each dtype, is timed in the same interleaved rounds
    as the steps (its first `matmul_repeats`): on a shared machine, a rate measured minutes
    apart can differ by a factor of three, and MFU would say more about the neighbours.
    """
    trainers: dict[DTypeName, _Trainer] = {
        dtype: _Trainer(spec, train, dtype) for dtype in PRECISIONS
    }
    matmuls = {dtype: Matmul(dtype, matmul_size) for dtype in PRECISIONS}
    step_cases = [
        Case(
            dtype,
            run=trainer.step,
            repeats=spec.timed_steps,
            warmup=functools.partial(trainer.warm_up, spec.warmup_steps),
        )
        for dtype, trainer in trainers.items()
    ]
    matmul_cases = [
        matmul.case(min(matmul_repeats, spec.timed_steps)) for matmul in matmuls.values()
    ]
    timings = {t.name: t for t in time_side_by_side([*step_cases, *matmul_cases])}
    results: list[TrainingResult] = []
    for dtype, trainer in trainers.items():
        step_seconds = timings[dtype].median
        tokens_per_second = spec.tokens_per_step / step_seconds
        flops_per_token = trainer.model.flops_per_token()
        matmul = matmuls[dtype].result(timings[matmuls[dtype].name])
        results.append(
            TrainingResult(
                model=spec.name,
                dtype=dtype,
                tokens_per_step=spec.tokens_per_step,
                steps=trainer.steps,
                step_seconds=step_seconds,
                tokens_per_second=tokens_per_second,
                flops_per_token=flops_per_token,
                matmul_flops_per_second=matmul.flops_per_second,
                mfu=flops_per_token * tokens_per_second / matmul.flops_per_second,
                val_loss=None if val is None else val_loss(trainer.model, val, spec, val_batches),
            )
        )
    return results


@torch.no_grad()
def val_loss(model: GPT, val: TokenFile, spec: TrainingSpec, batches: int) -> float:
    """Mean loss over fixed val batches, in float32 whatever the model trained in.

    Evaluating both models in the same precision compares the weights each training run
    produced, not the rounding of the evaluation.
    """
    sampler = BatchSampler(
        val.path, val.dtype, spec.model.block_size, spec.batch_size, seed=EVAL_SEED
    )
    model.eval()
    total = 0.0
    for _ in range(batches):
        x, y = sampler.next_batch()
        total += model(x, y).item()
    model.train()
    return total / batches


def write_random_tokens(path: Path, count: int, vocab_size: int) -> TokenFile:
    """`count` uniform random ids below `vocab_size`, written as a token file.

    Throughput does not depend on which ids a batch holds, so random ids stand in for a
    prepared GPT-2 corpus without needing tiktoken's ranks.
    """
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    ids = np.random.default_rng(0).integers(0, vocab_size, size=count, dtype=np.int64)
    ids.astype(dtype).tofile(path)
    return TokenFile(path, dtype)
