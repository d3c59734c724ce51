"""Whether bfloat16 autocast trains faster than float32 on this CPU, measured once.

CPU flags decide most machines: AMX matrix units make bfloat16 matmuls several times
faster, and a CPU without any bfloat16 instructions emulates them slowly. In between,
avx512_bf16 without AMX, the answer differs by vendor and generation: on this project's
AMD EPYC machines a small GPT trains about 1.4x faster in bfloat16 (`make bench`), while
another avx512_bf16 machine without AMX measured 2.6x slower. So there `dtype = "auto"` times a
few forward and backward passes of a transformer-sized MLP both ways and keeps the result
in a small JSON file under the user's cache folder, keyed by CPU model, flags, torch
version and thread count, so that the next run decides instantly and the same way.

Sampling asks a different question: a decoded token is one-row products with every weight
matrix, which read weights rather than compute, and bfloat16 kernels for them can lose to
float32 even where bfloat16 trains faster (an EPYC with avx512_bf16 trains 1.9x faster in
bfloat16 yet decoded the 7.3M shakespeare model faster in float32; an AMX Xeon too). So
`decode_bf16_speedup` times such a token both ways, cached beside the training verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ml_playground import atomic

CACHE_FILE = "cpu-precision.json"
# Rows x width of the probe: one micro-batch of a small preset (12 x 64 tokens, 256 wide).
ROWS, WIDTH = 768, 256
ROUNDS = 7
# Part of the cache key: a verdict of an older way of measuring is measured again.
# 2: each precision's fastest round, not the median (see measure_bf16_speedup).
PROBE_VERSION = "2"
TRAINING_PROBE = f"probe {PROBE_VERSION}"
# The decode probe: one token through the shakespeare preset's shape (4 blocks 128 wide,
# GPT-2's 50k vocabulary), the model most often sampled on a CPU; weights cast, as
# sampling casts them, and the output matrix in decode's (width, vocab) layout.
DECODE_PROBE = "decode probe 1"
DECODE_WIDTH, DECODE_LAYERS, DECODE_VOCAB = 128, 4, 50257
DECODE_TOKENS = 2  # tokens per round
DTYPES = (torch.float32, torch.bfloat16)
DECODE_PROBE_SECONDS = 0.5


@dataclass(frozen=True)
class Probe:
    speedup: float  # float32 time over bfloat16 time; above 1 bfloat16 is faster
    cache: Path
    cached: bool  # read from the cache rather than measured now


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/ml-playground, else ~/.cache/ml-playground."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ml-playground"


def machine_key(flags: Set[str], probe: str = TRAINING_PROBE) -> str:
    """What the measurement depends on: CPU, its features, torch and the thread count."""
    parts = [
        probe,
        cpu_model(),
        platform.machine(),
        hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
        torch.__version__,
        str(torch.get_num_threads()),
    ]
    return "|".join(parts)


def bf16_speedup(flags: Set[str], folder: Path | None = None) -> Probe:
    """The cached training speed-up for this machine, measured and cached on the first call."""
    return _cached(folder, machine_key(flags), measure_bf16_speedup)


def decode_bf16_speedup(flags: Set[str], folder: Path | None = None) -> Probe:
    """The cached decoding speed-up for this machine, measured and cached on the first call."""
    return _cached(folder, machine_key(flags, DECODE_PROBE), measure_decode_bf16_speedup)


def _cached(folder: Path | None, key: str, measure: Callable[[], float]) -> Probe:
    path = (folder or cache_dir()) / CACHE_FILE
    known = _read(path)
    saved = known.get(key)
    if isinstance(saved, float) and saved > 0:
        return Probe(saved, path, cached=True)
    speedup = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, {**known, key: speedup})
    except OSError:
        pass  # an unwritable cache costs a fraction of a second per run, nothing more
    return Probe(speedup, path, cached=False)


def measure_bf16_speedup(rounds: int = ROUNDS) -> float:
    """float32 over bfloat16-autocast time of an MLP block's forward and backward.

    The two precisions alternate round by round, so load on a shared machine hits both,
    and each keeps its fastest round: load only ever adds time, and on a busy 2-core
    machine the medians said bfloat16 was 0.71x where the idle machine measures 1.9x, a
    verdict the cache would then have kept.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, WIDTH, generator=generator)
    block = nn.Sequential(
        nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
    )

    def once(dtype: torch.dtype) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = block(x).float().square().mean()
        torch.autograd.backward(loss)
        block.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for dtype in (torch.float32, torch.bfloat16):  # warm-up: kernel choice, allocations
        once(dtype)
    fp32: list[float] = []
    bf16: list[float] = []
    for _ in range(rounds):
        fp32.append(once(torch.float32))
        bf16.append(once(torch.bfloat16))
    return min(fp32) / min(bf16)


def measure_decode_bf16_speedup(rounds: int = ROUNDS) -> float:
    """float32 over bfloat16 time of decoding a token: the blocks' one-row Linear products
    and the output matrix, with weights stored in each dtype; rounds alternate and each
    precision keeps its fastest (see measure_bf16_speedup)."""
    generator = torch.Generator().manual_seed(0)
    width = DECODE_WIDTH
    # Linear's (out, in) layout: query, key, value, output, MLP in and out, per block.
    shapes = [(width, width)] * 4 + [(4 * width, width), (width, 4 * width)]
    blocks = [
        torch.randn(rows, cols, generator=generator) / cols**0.5
        for _ in range(DECODE_LAYERS)
        for rows, cols in shapes
    ]
    head = torch.randn(width, DECODE_VOCAB, generator=generator) / width**0.5
    x = torch.randn(1, width, generator=generator)
    cast = {dtype: ([m.to(dtype) for m in blocks], head.to(dtype)) for dtype in DTYPES}

    @torch.inference_mode()
    def once(dtype: torch.dtype) -> float:
        matrices, output = cast[dtype]
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            h = x.to(dtype)
            for matrix in matrices:
                h = nn.functional.linear(h, matrix)
            torch.mm(h, output)  # the logits, which the probe does not need
        return time.perf_counter() - start

    for dtype in DTYPES:  # warm-up: kernel choice, allocations
        once(dtype)
    fp32: list[float] = []
    bf16: list[float] = []
    # Where bfloat16 is very slow (a one-row bfloat16 Linear took 25 ms against 4 us in
    # float32 with 2 threads on a busy EPYC) one round says so: the probe stops at its time
    # budget rather than finish all of them.
    deadline = time.perf_counter() + DECODE_PROBE_SECONDS
    while len(fp32) < rounds and (not fp32 or time.perf_counter() < deadline):
        fp32.append(once(torch.float32))
        bf16.append(once(torch.bfloat16))
    return min(fp32) / min(bf16)


def _read(path: Path) -> dict[str, object]:
    try:
        data: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again and replace it
    if not isinstance(data, dict):
        return {}
    return {str(key): value for key, value in cast(dict[object, object], data).items()}


def cpu_model() -> str:
    """The CPU's marketing name, as /proc/cpuinfo (or the platform) gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
