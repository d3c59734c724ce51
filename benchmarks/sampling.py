"""Sampling speed of the GPT backend under the shared decode loop (`sample.generate`).

Two comparisons, each timed side by side:

- With and without the KV cache: the project's default sampling settings (temperature,
  top_k, top_p) from a one-token prompt, batch 1, in each precision the sampler offers on
  a CPU: float32, and bfloat16 with the weights cast once as `sample` does. Asking for more
  tokens than block_size is deliberate: past it the cached path re-prefills half a block
  every block_size/2 tokens while the uncached path recomputes a full block per token,
  which is what a user's long sample costs.
- num_samples as one batch against as many generations one after another, with the cache
  in float32: a decoded token reads every weight, and a batch reads them once per step
  for all its rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.timing import Case, time_side_by_side
from ml_playground.config import DType, SampleSettings
from ml_playground.device import TORCH_DTYPES, seed_everything
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.sample.generate import generate
from ml_playground.sample.gpt import gpt_step

SEED = 1337
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class SamplingSpec:
    name: str
    model: GPTConfig
    new_tokens: int
    cached_repeats: int
    # Without the cache a run costs ~block_size/2 times more, so it is timed fewer times.
    uncached_repeats: int
    dtypes: tuple[DType, ...] = ("float32", "bfloat16")
    # num_samples for the batch against sequential comparison, and what each sample gets;
    # within block_size, so neither side pays for a context shift.
    batch_size: int = 8
    batch_new_tokens: int = 200
    batch_repeats: int = 2


@dataclass(frozen=True)
class SamplingResult:
    model: str
    dtype: DType
    use_cache: bool
    new_tokens: int
    runs: int
    seconds: float  # median over runs
    tokens_per_second: float
    # What decoding one token with the cache must read at least: every weight once (the
    # tied embedding as the output matrix) plus the cache. Divided into the memory
    # bandwidth, it bounds the cached rate.
    bytes_per_cached_token: int


@dataclass(frozen=True)
class BatchResult:
    model: str
    dtype: DType
    samples: int
    new_tokens: int  # per sample
    runs: int
    batch_seconds: float  # median over runs
    sequential_seconds: float  # median over runs

    @property
    def batch_tokens_per_second(self) -> float:
        return self.samples * self.new_tokens / self.batch_seconds

    @property
    def sequential_tokens_per_second(self) -> float:
        return self.samples * self.new_tokens / self.sequential_seconds

    @property
    def speedup(self) -> float:
        return self.sequential_seconds / self.batch_seconds


def measure_sampling(spec: SamplingSpec) -> list[SamplingResult]:
    """Tokens/s of `spec.new_tokens` generated with the cache and without, per dtype, all
    interleaved in one side-by-side timing."""
    seed_everything(SEED)
    reference = GPT(spec.model).eval()
    runs: list[tuple[DType, bool]] = [
        (dtype, use_cache) for dtype in spec.dtypes for use_cache in (True, False)
    ]
    models = {dtype: _cast(reference, dtype) for dtype in spec.dtypes}
    repeats = {True: spec.cached_repeats, False: spec.uncached_repeats}
    timings = time_side_by_side(
        [
            Case(
                _label(dtype, use_cache),
                run=functools.partial(_generate, models[dtype], spec.new_tokens, use_cache),
                repeats=repeats[use_cache],
                warmup=functools.partial(_generate, models[dtype], WARMUP_TOKENS, use_cache),
            )
            for dtype, use_cache in runs
        ]
    )
    return [
        SamplingResult(
            model=spec.name,
            dtype=dtype,
            use_cache=use_cache,
            new_tokens=spec.new_tokens,
            runs=len(timing.seconds),
            seconds=timing.median,
            tokens_per_second=spec.new_tokens / timing.median,
            bytes_per_cached_token=_bytes_per_cached_token(models[dtype]),
        )
        for (dtype, use_cache), timing in zip(runs, timings, strict=True)
    ]


def measure_batching(spec: SamplingSpec) -> BatchResult:
    """spec.batch_size samples in one batch and one after another, interleaved, in float32."""
    seed_everything(SEED)
    model = GPT(spec.model).eval()
    n, tokens = spec.batch_size, spec.batch_new_tokens
    batch, sequential = time_side_by_side(
        [
            Case(
                f"batch of {n}",
                run=functools.partial(_generate, model, tokens, samples=n),
                repeats=spec.batch_repeats,
                warmup=functools.partial(_generate, model, WARMUP_TOKENS, samples=n),
            ),
            Case(
                f"{n} one after another",
                run=functools.partial(_one_after_another, model, tokens, n),
                repeats=spec.batch_repeats,
                warmup=functools.partial(_generate, model, WARMUP_TOKENS),
            ),
        ]
    )
    return BatchResult(
        model=spec.name,
        dtype="float32",
        samples=n,
        new_tokens=tokens,
        runs=spec.batch_repeats,
        batch_seconds=batch.median,
        sequential_seconds=sequential.median,
    )


def _cast(model: GPT, dtype: DType) -> GPT:
    copy = GPT(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy.to(TORCH_DTYPES[dtype])


def _bytes_per_cached_token(model: GPT) -> int:
    """Weights read per decoded token (position embeddings: one row), plus a full cache."""
    c = model.config
    element = model.lm_head.weight.element_size()
    weights = sum(p.numel() for p in model.parameters()) - c.block_size * c.n_embd + c.n_embd
    cache = 2 * c.n_layer * c.block_size * c.n_embd
    return (weights + cache) * element


def _label(dtype: DType, use_cache: bool) -> str:
    return f"{dtype} {'KV cache' if use_cache else 'no cache'}"


def _generate(model: GPT, new_tokens: int, use_cache: bool = True, samples: int = 1) -> int:
    """Generate like `sample` does (default filters, a seeded draw); the tokens produced."""
    settings = SampleSettings(max_new_tokens=new_tokens, num_samples=samples)
    generator = torch.Generator().manual_seed(SEED)
    rows = generate(gpt_step(model, use_cache=use_cache), [0], settings, generator=generator)
    return sum(len(row.ids) for row in rows)


def _one_after_another(model: GPT, new_tokens: int, samples: int) -> int:
    return sum(_generate(model, new_tokens) for _ in range(samples))
