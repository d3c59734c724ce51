"""Where and in what precision a run computes: device choice, autocast and seeding."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_playground.config import Device, DType, DTypeChoice
from ml_playground.cpu_probe import Probe, bf16_speedup, decode_bf16_speedup
from ml_playground.errors import ConfigError

DTYPE_NAMES: dict[torch.dtype, DType] = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}
TORCH_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
# Intel's Advanced Matrix Extensions: the tile units that make bfloat16 matmuls fast on a CPU.
AMX_FLAGS = frozenset({"amx_bf16", "amx_tile"})
# bfloat16 dot products in AVX-512 registers: faster than float32 on some CPUs, slower on
# others, so auto measures (cpu_probe.py).
BF16_VECTOR_FLAG = "avx512_bf16"
# Below this measured speed-up float32 stays: the gain would not pay for bf16's rounding.
BF16_MIN_SPEEDUP = 1.1


@dataclass(frozen=True)
class Precision:
    """A resolved device plus how forward passes run on it."""

    device: torch.device
    dtype: torch.dtype
    reason: str = "set in runtime.dtype"
    """Why this dtype: the key that set it, or what `auto` saw on the hardware."""

    @property
    def dtype_name(self) -> DType:
        return DTYPE_NAMES[self.dtype]

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def uses_autocast(self) -> bool:
        return self.dtype != torch.float32

    @property
    def needs_grad_scaler(self) -> bool:
        # float16 has too little exponent range for small gradients; bfloat16 does not.
        return self.dtype == torch.float16 and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Mixed precision for the forward pass; parameters and optimizer stay float32."""
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def resolve_device(name: Device) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit choice must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "runtime.device = 'cuda' but no CUDA device is available; set device = 'auto' or 'cpu'"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "runtime.device = 'mps' but MPS is not available (Apple Silicon + macOS 12.3 "
            "needed); set device = 'auto' or 'cpu'"
        )
    return torch.device(name)


def resolve_precision(device: Device, dtype: DTypeChoice) -> Precision:
    resolved = resolve_device(device)
    if dtype == "auto":
        cuda_bf16 = resolved.type == "cuda" and torch.cuda.is_bf16_supported()
        cpu_flags = read_cpu_flags() if resolved.type == "cpu" else None
        chosen, why = auto_dtype(
            resolved.type,
            cpu_flags=cpu_flags,
            cuda_bf16=cuda_bf16,
            cpu_bf16_speedup=None if cpu_flags is None else _probe_cpu(cpu_flags),
        )
        return Precision(device=resolved, dtype=TORCH_DTYPES[chosen], reason=f"auto: {why}")
    torch_dtype = TORCH_DTYPES[dtype]
    if torch_dtype == torch.float16 and resolved.type == "cpu":
        raise ConfigError(
            "runtime.dtype = 'float16' is not supported on the CPU; use 'bfloat16' or 'float32'"
        )
    return Precision(device=resolved, dtype=torch_dtype)


def resolve_sampling_precision(device: Device, dtype: DTypeChoice) -> Precision:
    """`resolve_precision` for decoding: on a CPU with bfloat16 instructions `auto` is what
    decoded faster when measured here (`auto_sampling_dtype`), since bfloat16 training
    speed says little about one-row products; elsewhere the same as for training."""
    resolved = resolve_device(device)
    if dtype != "auto" or resolved.type != "cpu":
        return resolve_precision(device, dtype)
    flags = read_cpu_flags()
    chosen, why = auto_sampling_dtype(
        flags, None if flags is None else _probe(flags, decode_bf16_speedup)
    )
    return Precision(device=resolved, dtype=TORCH_DTYPES[chosen], reason=f"auto: {why}")


def auto_sampling_dtype(
    cpu_flags: Set[str] | None, decode_speedup: Callable[[], tuple[float, str]] | None
) -> tuple[DType, str]:
    """What `dtype = "auto"` decodes in on a CPU, and why: bfloat16 only where it measured
    faster (at least BF16_MIN_SPEEDUP), AMX or not."""
    if cpu_flags is None:
        return "float32", "this CPU's features cannot be read, float32 is the safe choice"
    if not (AMX_FLAGS & cpu_flags or BF16_VECTOR_FLAG in cpu_flags):
        return "float32", "this CPU has no bfloat16 instructions; they would be emulated"
    if decode_speedup is None:
        return "float32", "this CPU has bfloat16 instructions but was not measured"
    speedup, source = decode_speedup()
    verdict: DType = "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32"
    return verdict, f"bfloat16 measured {speedup:.2f}x the decoding speed of float32 ({source})"


def auto_dtype(
    device_type: str,
    *,
    cpu_flags: Set[str] | None,
    cuda_bf16: bool,
    cpu_bf16_speedup: Callable[[], tuple[float, str]] | None = None,
) -> tuple[DType, str]:
    """What `dtype = "auto"` trains in on this hardware, and why, as one clause.

    `cpu_flags` are the CPU's feature flags (None when they cannot be read); `cuda_bf16`
    whether the GPU computes in bfloat16. Where the flags alone cannot tell (avx512_bf16
    without AMX), `cpu_bf16_speedup` measures bfloat16 against float32 and says where the
    measurement came from (see cpu_probe.py); without it that case stays float32.
    """
    if device_type == "cuda":
        if cuda_bf16:
            return "bfloat16", "this GPU computes in bfloat16, which needs no grad scaler"
        return "float16", "this GPU has no bfloat16; float16 with a grad scaler"
    if device_type == "mps":
        return "float32", "bfloat16 on MPS needs macOS 14 and float16 a grad scaler"
    return _auto_cpu_dtype(cpu_flags, cpu_bf16_speedup)


def _auto_cpu_dtype(
    cpu_flags: Set[str] | None, cpu_bf16_speedup: Callable[[], tuple[float, str]] | None
) -> tuple[DType, str]:
    if cpu_flags is None:
        return "float32", "this CPU's features cannot be read, float32 is the safe choice"
    if AMX_FLAGS & cpu_flags:
        return "bfloat16", "this CPU has AMX matrix units for bfloat16"
    if BF16_VECTOR_FLAG not in cpu_flags:
        return "float32", "this CPU has no bfloat16 instructions; autocast would emulate them"
    if cpu_bf16_speedup is None:
        return "float32", "this CPU has avx512_bf16 but no AMX, and was not measured"
    speedup, source = cpu_bf16_speedup()
    verdict: DType = "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32"
    return verdict, (
        f"bfloat16 autocast measured {speedup:.2f}x the speed of float32 on this CPU "
        f"(avx512_bf16, no AMX; {source})"
    )


def _probe_cpu(flags: Set[str]) -> Callable[[], tuple[float, str]]:
    return _probe(flags, bf16_speedup)


def _probe(flags: Set[str], probe: Callable[[Set[str]], Probe]) -> Callable[[], tuple[float, str]]:
    def measure() -> tuple[float, str]:
        result = probe(flags)
        return result.speedup, f"{'cached in' if result.cached else 'saved to'} {result.cache}"

    return measure


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where there is none (off Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()  # no x86 flags line (an ARM CPU, say): no AMX either


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def capture_rng() -> dict[str, Any]:
    """The global torch RNG states (dropout draws from them)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def free_memory_bytes(device: torch.device, meminfo: Path = MEMINFO) -> int | None:
    """Memory a run on `device` can still take, in bytes; None where it cannot be read.

    CUDA: what the driver reports free; MPS: the recommended working set less what Metal
    holds; CPU: the kernel's MemAvailable (Linux), else the free physical pages.
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel counts in KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
