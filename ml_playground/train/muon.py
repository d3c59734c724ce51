"""Muon with its Newton-Schulz iterations batched over the matrices of one shape.

torch.optim.Muon orthogonalises one matrix at a time: per matrix a copy, a transpose, a
norm, then five iterations of three small matmuls, then two in-place updates. A small GPT
has dozens of such matrices, and at its size each op is short, so the loop of ops, not the
arithmetic, set the cost of a step: 1.6x an AdamW step on the character-level model,
profiled. torch offers no option that batches them (`foreach=True` is refused for Muon),
hence this subclass, which computes the same update in fewer, larger kernels:

- the momentum and Nesterov blends of all matrices in two `torch._foreach_lerp` calls;
- every matrix turned wide (rows <= columns, as torch turns it) and stacked with the
  others of its shape, so a 4-layer GPT's 16-28 matrices become 2-4 stacks, each
  orthogonalised by `torch.bmm` / `torch.baddbmm` in five iterations;
- the decay and the step as one `torch._foreach_*` call per parameter shape.

The arithmetic is torch's, op for op: the same coefficients, the same Frobenius-norm
scaling and eps, the matmuls in bfloat16 (on a CPU without bfloat16 instructions, where
bfloat16 matmuls are emulated and slow, in float32 instead), the same learning-rate
adjustment. Only the order of additions inside a batched matmul may differ, so the
update equals torch's within bfloat16 rounding (tests/unit/test_muon.py). The optimizer
state is torch's own (one momentum buffer per matrix, the same param_groups), so its
state_dict is interchangeable with torch.optim.Muon's and resumes bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast, overload

import torch
from torch import Tensor
from torch.optim._muon import _adjust_lr  # pyright: ignore[reportPrivateUsage] - torch's own scaling, reused rather than restated

from ml_playground.device import AMX_FLAGS, BF16_VECTOR_FLAG, read_cpu_flags


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon's update, batched over matrices of one shape (module docstring)."""

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params: list[Tensor] = []
                grads: list[Tensor] = []
                buffers: list[Tensor] = []
                self._init_group(group, params, grads, buffers)  # pyright: ignore[reportUnknownMemberType] - torch leaves its group type unannotated
                if params:
                    _step_group(group, params, grads, buffers)
        return loss


def _step_group(
    group: dict[str, Any], params: list[Tensor], grads: list[Tensor], buffers: list[Tensor]
) -> None:
    lr, momentum = float(group["lr"]), float(group["momentum"])
    torch._foreach_lerp_(buffers, grads, 1 - momentum)  # pyright: ignore[reportPrivateUsage, reportPrivateImportUsage] - torch's multi-tensor ops have no public name
    nesterov = bool(group["nesterov"])
    updates = torch._foreach_lerp(grads, buffers, momentum) if nesterov else buffers  # pyright: ignore[reportPrivateUsage, reportPrivateImportUsage] - torch's multi-tensor ops have no public name
    orthogonal = orthogonalise(
        updates, group["ns_coefficients"], group["ns_steps"], group["eps"], ns_dtype(params[0])
    )
    torch._foreach_mul_(params, 1 - lr * float(group["weight_decay"]))  # pyright: ignore[reportPrivateUsage, reportPrivateImportUsage] - torch's multi-tensor ops have no public name
    for indices in _by_shape(params).values():
        shape = params[indices[0]].shape
        torch._foreach_add_(  # pyright: ignore[reportPrivateUsage, reportPrivateImportUsage] - torch's multi-tensor ops have no public name
            [params[i] for i in indices],
            [orthogonal[i] for i in indices],
            alpha=-_adjust_lr(lr, group["adjust_lr_fn"], shape),
        )


def orthogonalise(
    matrices: Sequence[Tensor],
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype,
) -> list[Tensor]:
    """torch's Newton-Schulz orthogonalisation of each matrix, computed a stack at a time;
    returned in the matrices' order and dtype."""
    a, b, c = coefficients
    out: list[Tensor | None] = [None] * len(matrices)
    for indices in _by_wide_shape(matrices).values():
        wide = [_wide(matrices[i]) for i in indices]
        x = torch.stack(wide).to(dtype)
        # Frobenius norm of each matrix: its spectral norm is then at most 1.
        norms = cast(Tensor, x.norm(dim=(1, 2), keepdim=True))  # pyright: ignore[reportUnknownMemberType] - an overload torch's stubs leave open
        x = x.div_(norms.clamp_(min=eps))
        for _ in range(steps):
            gram = torch.bmm(x, x.mT)
            gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, gram_update, x, beta=a)
        result = x.to(matrices[indices[0]].dtype)
        for j, i in enumerate(indices):
            out[i] = _unwide(result[j], matrices[i])
    return [t for t in out if t is not None]


def ns_dtype(param: Tensor) -> torch.dtype:
    """bfloat16, as torch's Muon, unless this is a CPU that would emulate it."""
    return _ns_dtype_on(param.device.type)


@functools.cache
def _ns_dtype_on(device_type: str) -> torch.dtype:
    if device_type != "cpu":
        return torch.bfloat16
    flags = read_cpu_flags()
    if flags is None or flags & AMX_FLAGS or BF16_VECTOR_FLAG in flags:
        return torch.bfloat16
    return torch.float32


def _wide(matrix: Tensor) -> Tensor:
    return matrix.T if matrix.size(0) > matrix.size(1) else matrix


def _unwide(result: Tensor, matrix: Tensor) -> Tensor:
    return result.T if matrix.size(0) > matrix.size(1) else result


def _by_wide_shape(matrices: Sequence[Tensor]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, matrix in enumerate(matrices):
        rows, cols = matrix.shape
        groups.setdefault((min(rows, cols), max(rows, cols)), []).append(i)
    return groups


def _by_shape(params: Sequence[Tensor]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, param in enumerate(params):
        groups.setdefault(tuple(param.shape), []).append(i)
    return groups
