"""Sampling speed of `GPT.generate` with and without the KV cache.

Both paths run the project's default sampling settings (temperature, top_k, top_p) in
float32 from a one-token prompt, batch 1. Asking for more tokens than block_size is
deliberate: past it the cached path re-prefills half a block every block_size/2 tokens
while the uncached path recomputes a full block per token, which is what a user's long
sample costs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from benchmarks.timing import Case, time_side_by_side
from ml_playground.config import SampleSettings
from ml_playground.device import seed_everything
from ml_playground.model.gpt import GPT, GPTConfig

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


@dataclass(frozen=True)
class SamplingResult:
    model: str
    use_cache: bool
    new_tokens: int
    runs: int
    seconds: float  # median over runs
    tokens_per_second: float


def measure_sampling(spec: SamplingSpec) -> list[SamplingResult]:
    """Tokens/s of `spec.new_tokens` generated with the cache and without, side by side."""
    seed_everything(SEED)
    model = GPT(spec.model).eval()
    repeats = {True: spec.cached_repeats, False: spec.uncached_repeats}
    timings = time_side_by_side(
        [
            Case(
                _label(use_cache),
                run=functools.partial(_generate, model, spec.new_tokens, use_cache),
                repeats=repeats[use_cache],
                warmup=functools.partial(_generate, model, WARMUP_TOKENS, use_cache),
            )
            for use_cache in (True, False)
        ]
    )
    return [
        SamplingResult(
            model=spec.name,
            use_cache=use_cache,
            new_tokens=spec.new_tokens,
            runs=len(timing.seconds),
            seconds=timing.median,
            tokens_per_second=spec.new_tokens / timing.median,
        )
        for use_cache, timing in zip((True, False), timings, strict=True)
    ]


def _label(use_cache: bool) -> str:
    return "KV cache" if use_cache else "no cache"


def _generate(model: GPT, new_tokens: int, use_cache: bool) -> int:
    settings = SampleSettings()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    generator = torch.Generator().manual_seed(SEED)
    produced = 0
    for _ in model.generate(
        prompt,
        new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        generator=generator,
        use_cache=use_cache,
    ):
        produced += 1
    return produced
