"""Training throughput in float32 and bfloat16, and what bf16 does to the loss.

A step is the training loop's own `optimizer_step` (ml_playground/train/loop.py) with
grad_accum_steps = 1: draw a batch from the memmapped token file, forward under the
precision's autocast, backward, clip, AdamW step, zero the gradients; the validation loss
is the loop's own `estimate_loss`, on the same fixed batches for every model. Each precision
gets its own model and optimizer, built from the same seed and fed the same batches, and
the two step in alternation, so their speed ratio is measured side by side and their
losses can be compared after the same number of steps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.hardware import Matmul
from benchmarks.timing import Case, time_side_by_side
from ml_playground.checkpoint import TrainingState
from ml_playground.config import Arch, DType, DTypeChoice, OptimizerName, TrainConfig
from ml_playground.device import resolve_precision, seed_everything
from ml_playground.distributed import Ranks
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.run_folder import Slot
from ml_playground.train.gpt import gpt_loss
from ml_playground.train.loop import Run, TokenFiles, assemble_run, estimate_loss, optimizer_step

PRECISIONS: tuple[DType, ...] = ("float32", "bfloat16")
SEED = 1337


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

    def with_arch(self, arch: Arch) -> TrainingSpec:
        """The same sizes with the other block; named e.g. `medium-llama`."""
        return replace(self, name=f"{self.name}-{arch}", model=self.model.replace(arch=arch))

    def with_vocab(self, vocab_size: int, vocab: str) -> TrainingSpec:
        return replace(self, model=self.model.replace(vocab_size=vocab_size), vocab=vocab)

    def describe(self) -> str:
        m = self.model
        return (
            f"{m.arch} {m.n_layer}L {m.n_head}H {m.n_embd}d, T={m.block_size} B={self.batch_size}, "
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
    dtype: DType
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

    def __init__(
        self,
        spec: TrainingSpec,
        train: TokenFile,
        val: TokenFile | None,
        dtype: DType,
        optimizer: OptimizerName = "adamw",
    ) -> None:
        seed_everything(SEED)
        self.model = GPT(spec.model)
        settings = TrainConfig.model_validate(
            {
                "data": {"batch_size": spec.batch_size},
                "optim": {"name": optimizer},
                "runtime": {"seed": SEED},
            }
        )
        self.run: Run = assemble_run(
            settings,
            resolve_precision("cpu", dtype),
            Ranks(),
            model=self.model,
            files=TokenFiles(train.path, (val or train).path, train.dtype, spec.model.vocab_size),
            block_size=spec.model.block_size,
            loss=gpt_loss,
            write=never_saved,
            description=spec.describe(),
            resume=None,
            resume_source="",
        )
        self.steps = 0

    def step(self) -> None:
        optimizer_step(self.run, self.run.train.optim.learning_rate)
        self.steps += 1

    def warm_up(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def val_loss(self, batches: int) -> float:
        """Mean loss over the loop's fixed val batches, in float32 whatever the model
        trained in: comparing the weights each run produced, not the evaluation's rounding."""
        runtime = self.run.train.runtime.model_copy(update={"eval_iters": batches})
        settings = self.run.train.model_copy(update={"runtime": runtime})
        fp32 = replace(self.run, train=settings, precision=resolve_precision("cpu", "float32"))
        return estimate_loss(fp32)["val"]


def never_saved(slots: tuple[Slot, ...], state: TrainingState) -> Path:
    raise AssertionError(f"the benchmark never saves (asked for {slots} at {state.iter_num})")


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
    trainers: dict[DType, _Trainer] = {
        dtype: _Trainer(spec, train, val, dtype) for dtype in PRECISIONS
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
                val_loss=None if val is None else trainer.val_loss(val_batches),
            )
        )
    return results


@dataclass(frozen=True)
class OptimizerRatio:
    """A Muon step's time over an AdamW step's, the same model and batches side by side."""

    model: str
    dtype: DType
    adamw_seconds: float  # median step, forward and backward included
    muon_seconds: float

    @property
    def ratio(self) -> float:
        return self.muon_seconds / self.adamw_seconds


def measure_optimizer_ratio(
    spec: TrainingSpec, train: TokenFile, dtype: DTypeChoice = "auto"
) -> OptimizerRatio:
    """AdamW and Muon (the loop's own optimizer steps) timed in interleaved rounds, in the
    precision `dtype` resolves to here, as a run with that dtype would train."""
    resolved = resolve_precision("cpu", dtype).dtype_name
    names: tuple[OptimizerName, ...] = ("adamw", "muon")
    trainers = {name: _Trainer(spec, train, None, resolved, optimizer=name) for name in names}
    cases = [
        Case(
            name,
            run=trainer.step,
            repeats=spec.timed_steps,
            warmup=functools.partial(trainer.warm_up, spec.warmup_steps),
        )
        for name, trainer in trainers.items()
    ]
    timings = {t.name: t.median for t in time_side_by_side(cases)}
    return OptimizerRatio(spec.name, resolved, timings["adamw"], timings["muon"])


def write_random_tokens(path: Path, count: int, vocab_size: int) -> TokenFile:
    """`count` uniform random ids below `vocab_size`, written as a token file.

    Throughput does not depend on which ids a batch holds, so random ids stand in for a
    prepared GPT-2 corpus without needing tiktoken's ranks.
    """
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    ids = np.random.default_rng(0).integers(0, vocab_size, size=count, dtype=np.int64)
    ids.astype(dtype).tofile(path)
    return TokenFile(path, dtype)
