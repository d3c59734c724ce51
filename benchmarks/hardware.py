"""What the numbers were measured on: the CPU, its bf16 support and its matmul FLOP/s.

The measured matmul rate is the denominator of MFU. A datasheet peak would flatter no CPU
run (it assumes every core at full turbo with nothing else running); the rate one large
matmul reaches on this machine, now, is the ceiling a training step could hope for.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.timing import Case, Timing, time_side_by_side
from ml_playground.config import DType
from ml_playground.device import TORCH_DTYPES

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Environment:
    torch_version: str
    threads: int
    cores: int
    cpu_model: str
    amx_bf16: bool
    avx512_bf16: bool
    load_average: float

    @property
    def has_bf16_matrix_units(self) -> bool:
        """AMX tiles are the bf16 matrix units; avx512_bf16 alone is a vector dot product,
        too narrow for bf16 training to outrun fp32 by much."""
        return self.amx_bf16

    def describe(self) -> str:
        flags = [
            name
            for name, on in (("amx_bf16", self.amx_bf16), ("avx512_bf16", self.avx512_bf16))
            if on
        ]
        return (
            f"torch {self.torch_version} | {self.threads} threads on {self.cores} cores | "
            f"{self.cpu_model} | bf16 flags: {', '.join(flags) or 'none'} | "
            f"load average {self.load_average:.1f} at start"
        )


def environment() -> Environment:
    flags, model = _cpuinfo()
    return Environment(
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        cores=os.cpu_count() or 1,
        cpu_model=model,
        amx_bf16="amx_bf16" in flags,
        avx512_bf16="avx512_bf16" in flags,
        load_average=os.getloadavg()[0],
    )


def _cpuinfo() -> tuple[frozenset[str], str]:
    """The first processor's flags and model name; empty on systems without /proc/cpuinfo."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset(), platform.processor() or "unknown CPU"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return frozenset(fields.get("flags", "").split()), fields.get("model name", "unknown CPU")


@dataclass(frozen=True)
class MatmulResult:
    dtype: DType
    size: int
    seconds: float  # median
    flops_per_second: float


class Matmul:
    """A square (size x size) @ (size x size) matmul in one dtype, ready to be timed."""

    def __init__(self, dtype: DType, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.dtype: DType = dtype
        self.size = size
        self._a = torch.randn(size, size, generator=generator).to(TORCH_DTYPES[dtype])
        self._b = torch.randn(size, size, generator=generator).to(TORCH_DTYPES[dtype])

    @property
    def name(self) -> str:
        return f"matmul {self.dtype} {self.size}"

    def run(self) -> None:
        torch.mm(self._a, self._b)

    def case(self, repeats: int) -> Case:
        return Case(self.name, run=self.run, repeats=repeats, warmup=self.run)

    def result(self, timing: Timing) -> MatmulResult:
        flops = 2 * self.size**3  # a multiply and an add per term of every output element
        return MatmulResult(self.dtype, self.size, timing.median, flops / timing.median)


def measure_matmul(dtype: DType, size: int, repeats: int) -> MatmulResult:
    """Median FLOP/s of one large square matmul in `dtype`, timed on its own."""
    matmul = Matmul(dtype, size)
    (timing,) = time_side_by_side([matmul.case(repeats)])
    return matmul.result(timing)


@dataclass(frozen=True)
class BandwidthResult:
    megabytes: int
    seconds: float  # median per pass
    bytes_per_second: float


def measure_memory_bandwidth(megabytes: int, repeats: int) -> BandwidthResult:
    """Median rate at which one pass reads a float32 buffer of `megabytes` (summing it).

    Decoding a token with the KV cache reads every weight once and does little arithmetic
    per byte, so this rate, not the matmul FLOP/s, bounds it. The buffer should be larger
    than the last-level cache, as a model's weights are.
    """
    buffer = torch.ones(megabytes * 1_000_000 // 4, dtype=torch.float32)

    def read() -> None:
        buffer.sum()

    (timing,) = time_side_by_side([Case("memory read", run=read, repeats=repeats, warmup=read)])
    size = buffer.numel() * buffer.element_size()
    return BandwidthResult(megabytes, timing.median, size / timing.median)
