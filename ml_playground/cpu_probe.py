"""Whether bfloat16 autocast trains faster than float32 on this CPU, measured once.

CPU flags decide most machines: AMX matrix units make bfloat16 matmuls several times
faster, and a CPU without any bfloat16 instructions emulates them slowly. In between,
avx512_bf16 without AMX, the answer differs by vendor and generation: on this project's
AMD EPYC machines a small GPT trains about 1.4x faster in bfloat16 (`make bench`), while
another avx512_bf16 machine without AMX measured 2.6x slower. So there `dtype = "auto"` times a
few forward and backward passes of a transformer-sized MLP both ways and keeps the result
in a small JSON file under the user's cache folder, keyed by CPU model, flags, torch
version and thread count, so that the next run decides instantly and the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Set
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


@dataclass(frozen=True)
class Probe:
    speedup: float  # float32 time over bfloat16 time; above 1 bfloat16 is faster
    cache: Path
    cached: bool  # read from the cache rather than measured now


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/ml-playground, else ~/.cache/ml-playground."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ml-playground"


def machine_key(flags: Set[str]) -> str:
    """What the measurement depends on: CPU, its features, torch and the thread count."""
    parts = [
        f"probe {PROBE_VERSION}",
        cpu_model(),
        platform.machine(),
        hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
        torch.__version__,
        str(torch.get_num_threads()),
    ]
    return "|".join(parts)


def bf16_speedup(flags: Set[str], folder: Path | None = None) -> Probe:
    """The cached speed-up for this machine, measuring and caching it on the first call."""
    path = (folder or cache_dir()) / CACHE_FILE
    key = machine_key(flags)
    known = _read(path)
    saved = known.get(key)
    if isinstance(saved, float) and saved > 0:
        return Probe(saved, path, cached=True)
    speedup = measure_bf16_speedup()
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
