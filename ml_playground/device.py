"""Where and in what precision a run computes: device choice, autocast and seeding."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from ml_playground.config import Device, DType
from ml_playground.errors import ConfigError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Precision:
    """A resolved device plus how forward passes run on it."""

    device: torch.device
    dtype: torch.dtype

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


def resolve_precision(device: Device, dtype: DType) -> Precision:
    resolved = resolve_device(device)
    torch_dtype = TORCH_DTYPES[dtype]
    if torch_dtype == torch.float16 and resolved.type == "cpu":
        raise ConfigError(
            "runtime.dtype = 'float16' is not supported on the CPU; use 'bfloat16' or 'float32'"
        )
    return Precision(device=resolved, dtype=torch_dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
