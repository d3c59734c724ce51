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
- Decoding at batch 1 against llama.cpp's `llama-bench` (`tg`) on the GGUF the exporter
  writes from the same weights, same threads, same precision (`measure_decode`).
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks import corpus
from benchmarks.timing import Case, time_once, time_side_by_side
from ml_playground.config import DType, SampleSettings
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.device import TORCH_DTYPES, seed_everything
from ml_playground.export.gguf_gpt import write_gpt_gguf
from ml_playground.export.gpt import vocab_for
from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.sample.generate import Step, generate
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
    # Taken once per model, as `load_gpt` does, not inside the timed runs.
    heads = {dtype: models[dtype].decoding_head() for dtype in spec.dtypes}
    repeats = {True: spec.cached_repeats, False: spec.uncached_repeats}
    timings = time_side_by_side(
        [
            Case(
                _label(dtype, use_cache),
                run=functools.partial(
                    _generate, models[dtype], spec.new_tokens, use_cache, head=heads[dtype]
                ),
                repeats=repeats[use_cache],
                warmup=functools.partial(
                    _generate, models[dtype], WARMUP_TOKENS, use_cache, head=heads[dtype]
                ),
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
    head = model.decoding_head()
    n, tokens = spec.batch_size, spec.batch_new_tokens
    batch, sequential = time_side_by_side(
        [
            Case(
                f"batch of {n}",
                run=functools.partial(_generate, model, tokens, samples=n, head=head),
                repeats=spec.batch_repeats,
                warmup=functools.partial(_generate, model, WARMUP_TOKENS, samples=n, head=head),
            ),
            Case(
                f"{n} one after another",
                run=functools.partial(_one_after_another, model, tokens, n, head),
                repeats=spec.batch_repeats,
                warmup=functools.partial(_generate, model, WARMUP_TOKENS, head=head),
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


def _generate(
    model: GPT,
    new_tokens: int,
    use_cache: bool = True,
    samples: int = 1,
    head: Tensor | None = None,
) -> int:
    """Generate like `sample` does (default filters, a seeded draw); the tokens produced.
    `head` is what `load_gpt` hands every step; without it each call takes its own."""
    settings = SampleSettings(max_new_tokens=new_tokens, num_samples=samples)
    generator = torch.Generator().manual_seed(SEED)
    step = gpt_step(model, head=head) if use_cache else uncached_step(model)
    rows = generate(step, [0], settings, generator=generator)
    return sum(len(row.ids) for row in rows)


def uncached_step(model: GPT) -> Step:
    """The whole window recomputed every step, as nanoGPT does: what the KV cache is
    measured (and, in tests, checked) against."""
    block_size, vocab_size = model.config.block_size, model.config.vocab_size
    context: Tensor | None = None

    def step(ids: Tensor) -> Tensor:
        nonlocal context
        ids = ids.to(model.transformer.wte.weight.device)
        context = ids if context is None else torch.cat((context, ids), dim=1)
        context = context[:, -block_size:]
        return model.next_token_logits(model(context, last_only=True))[:, :vocab_size]

    return step


def _one_after_another(model: GPT, new_tokens: int, samples: int, head: Tensor) -> int:
    return sum(_generate(model, new_tokens, head=head) for _ in range(samples))


# --- decode, batch 1: ours against llama.cpp's llama-bench on our own GGUF ----------------

LLAMA_BENCH = corpus.REPO_ROOT / "tools" / "llama_cpp" / "bin" / "llama-bench"
LLAMA_BENCH_MISSING = "llama-bench not built: run `make llama-cpp` (a few CPU minutes)"
# What the GGUF holds and llama-bench computes in, to match our float32 weights and cache.
GGUF_PRECISION: dict[DType, NativeQuant] = {"float32": "f32"}


@dataclass(frozen=True)
class DecodeSpec:
    """One model decoded at batch 1 by both: `new_tokens` from one token, as `tg` does."""

    name: str
    model: GPTConfig
    new_tokens: int = 64  # llama-bench's tg64
    repeats: int = 5
    dtype: DType = "float32"


@dataclass(frozen=True)
class DecodeResult:
    model: str
    dtype: DType
    threads: int
    new_tokens: int
    runs: int
    ours_tokens_per_second: float  # median; the default sampling filters included
    llama_tokens_per_second: float | None  # median of llama-bench's tg; None when not run
    llama_note: str  # the command, or why it did not run

    @property
    def ratio(self) -> float | None:
        if self.llama_tokens_per_second is None:
            return None
        return self.ours_tokens_per_second / self.llama_tokens_per_second


def measure_decode(
    spec: DecodeSpec, work_dir: Path, llama_bench: Path = LLAMA_BENCH
) -> DecodeResult:
    """Our `sample` decode loop and llama-bench's `tg` on the GGUF our exporter writes from
    the same weights, same threads and precision, in alternating rounds.

    Ours draws with the project's default filters (temperature, top_k 200), which llama-bench
    does not do at all: the comparison counts that against us. Each llama-bench run is a
    process of its own with one repetition after its warm-up; its own tokens/s excludes
    loading the model, as ours excludes loading the checkpoint.
    """
    seed_everything(SEED)
    model = GPT(spec.model).eval().to(TORCH_DTYPES[spec.dtype])
    threads = torch.get_num_threads()
    gguf = work_dir / f"{spec.name}-{GGUF_PRECISION[spec.dtype]}.gguf"
    write_gpt_gguf(
        gguf,
        {key: value.float() for key, value in model.state_dict().items()},
        spec.model,
        vocab_for(TokenizerSpec(kind="tiktoken", encoding="gpt2")),
        quant=GGUF_PRECISION[spec.dtype],
        model_name=spec.name,
    )
    command = _llama_bench_command(llama_bench, gguf, spec, threads)
    head = model.decoding_head()
    _generate(model, WARMUP_TOKENS, head=head)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(spec.repeats):
        seconds = time_once(functools.partial(_generate, model, spec.new_tokens, head=head))
        ours.append(spec.new_tokens / seconds)
        if llama_bench.is_file():
            theirs.append(_llama_bench_tg(command))
    note = " ".join([llama_bench.name, *command[1:]]) if theirs else LLAMA_BENCH_MISSING
    return DecodeResult(
        model=spec.name,
        dtype=spec.dtype,
        threads=threads,
        new_tokens=spec.new_tokens,
        runs=spec.repeats,
        ours_tokens_per_second=statistics.median(ours),
        llama_tokens_per_second=statistics.median(theirs) if theirs else None,
        llama_note=note.replace(str(gguf), gguf.name),
    )


def _llama_bench_command(binary: Path, gguf: Path, spec: DecodeSpec, threads: int) -> list[str]:
    # Its key/value cache stays f16: llama-bench takes no f32 cache type. That halves what
    # its cache reads, a small share of a step next to the weights.
    return [
        str(binary),
        *("-m", str(gguf), "-p", "0", "-n", str(spec.new_tokens), "-t", str(threads)),
        *("-r", "1", "-o", "json"),
    ]


def _llama_bench_tg(command: list[str]) -> float:
    """llama-bench's tokens/s for its tg test; a failure is the benchmark's error, loudly."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-500:]}")
    tests: list[dict[str, object]] = json.loads(done.stdout)
    value = tests[0]["avg_ts"]
    if not isinstance(value, int | float):
        raise RuntimeError(f"llama-bench reported no tokens/s: {done.stdout[:500]}")
    return float(value)
