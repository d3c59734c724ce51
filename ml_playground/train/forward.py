"""The model as the training step calls it: wrapped in DistributedDataParallel under a
launcher, compiled where asked, and eager again where compiling fails."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException
from torch.nn.parallel import DistributedDataParallel

from ml_playground.device import Precision
from ml_playground.distributed import Ranks


class Forward:
    """The model as trained: the bare model or its DDP wrapper (`module`), called through
    torch.compile until compiling fails.

    torch.compile() returns at once: tracing and code generation happen lazily, at the
    first call (and again when a guard fails, as the first evaluation under no_grad does).
    A failure there (no C++ compiler, an op dynamo cannot trace) raises a dynamo exception
    before the compiled graph has run, so the same call can be answered eagerly. The run
    says so in one line and stays eager; an error in the model itself recurs eagerly and
    surfaces as it would without compile.
    """

    def __init__(self, module: nn.Module, compiled: Callable[..., Any] | None = None) -> None:
        self.module = module
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except TorchDynamoException as exc:
                self.compiled = None
                reason = next((line for line in str(exc).splitlines() if line.strip()), "")
                print(
                    f"compile: failed at the first call ({type(exc).__name__}: "
                    f"{reason[:200]}); running eagerly"
                )
        return self.module(*args, **kwargs)

    def without_gradient_sync(self) -> AbstractContextManager[None]:
        """DDP all-reduces gradients in backward; the micro-steps before an accumulation's
        last one skip it."""
        if isinstance(self.module, DistributedDataParallel):
            return self.module.no_sync()
        return contextlib.nullcontext()


def training_forward(
    model: nn.Module, precision: Precision, ranks: Ranks, *, compile_model: bool
) -> Forward:
    """The model in DDP under a launcher, compiled where asked."""
    module = model
    if ranks.is_distributed:
        # DDP all-reduces the gradients of the parameters that require them (for LoRA just
        # the adapters; the frozen base stays out of the reduction). Buffers (rotary
        # frequencies, causal masks) are constants loaded alike on every rank, so they are
        # synced once at start-up but not before every forward pass.
        device_ids = [precision.device.index] if precision.device.type == "cuda" else None
        module = DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    return maybe_compile(module, precision) if compile_model else Forward(module)


def maybe_compile(model: nn.Module, precision: Precision) -> Forward:
    """torch.compile where it works; otherwise say why and run eagerly."""
    if precision.device_type == "mps":
        print("compile: skipped, torch.compile does not support the MPS backend reliably")
        return Forward(model)
    try:
        compiled = torch.compile(model)
    except (RuntimeError, ImportError) as exc:  # e.g. an unsupported Python version
        print(f"compile: skipped, torch.compile failed ({exc}); running eagerly")
        return Forward(model)
    return Forward(model, compiled)
