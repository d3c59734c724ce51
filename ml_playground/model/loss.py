"""Cross-entropy over a large vocabulary without materialising the (tokens x vocab) logits.

For a small GPT with GPT-2's 50k vocabulary the output layer dominates memory traffic: a
batch of 16 x 256 tokens has 206M logits, 824 MB in float32. The plain path writes them,
converts them to float32 under autocast, writes log-probabilities, then allocates, zero-fills
and writes a gradient of the same size; on a CPU that is seconds of memory traffic per step
and the reason bfloat16 autocast gained little there.

`vocab_cross_entropy` instead walks the tokens in chunks. For each chunk it computes the
logits, their log-sum-exp in float32 and, when training, the gradient right away
(softmax - one_hot), turning it into the gradients of the hidden states and of the output
matrix before the chunk's logits are dropped. Backward then only scales what forward kept.
The matmuls are the same as the plain path's; what disappears is the full-size logits and
every pass over them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -1
# Logit elements per chunk: 4M float32 values (16 MB), so a chunk's logits and gradient
# stay in a server CPU's last-level cache while keeping each chunk's matmuls large.
CHUNK_ELEMENTS = 1 << 22
MIN_CHUNK_ROWS = 64


def vocab_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, *, chunk_rows: int | None = None
) -> Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, with IGNORE_INDEX skipped.

    hidden (N, C), weight (V, C), targets (N,). Equal, up to float rounding, to
    `F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)`, and differentiable in
    `hidden` and `weight`. Under autocast the matmuls run in the autocast dtype and the
    softmax in float32, as autocast does for the plain path. `chunk_rows` overrides how
    many tokens each chunk holds (by default about CHUNK_ELEMENTS logits).
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, C) and targets (N,), got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    compute_dtype = _compute_dtype(hidden)
    chunk = chunk_rows or max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // weight.size(0))
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            loss: Tensor = _FusedLoss.apply(hidden, weight, targets, compute_dtype, chunk)
            return loss
        return _chunked_loss(hidden, weight, targets, compute_dtype, chunk, gradients=None)


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _FusedLoss(torch.autograd.Function):
    """Loss in forward with its gradients computed on the spot; backward scales them."""

    @staticmethod
    def forward(  # noqa: PLR0917 - Function.apply passes its inputs positionally
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        compute_dtype: torch.dtype,
        chunk: int,
    ) -> Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        loss = _chunked_loss(
            hidden, weight, targets, compute_dtype, chunk, gradients=(grad_hidden, grad_weight)
        )
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        (grad_loss,) = grad_outputs
        grad_hidden, grad_weight = ctx.saved_tensors
        needs_hidden, needs_weight = ctx.needs_input_grad[:2]
        return (
            grad_hidden * grad_loss if needs_hidden else None,
            grad_weight * grad_loss if needs_weight else None,
            None,
            None,
            None,
        )


def _chunked_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    compute_dtype: torch.dtype,
    chunk: int,
    *,
    gradients: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """The mean loss; with `gradients` = (d hidden, d weight) buffers, also fills those with
    the gradient of the mean loss (d weight accumulated in float32)."""
    valid = targets != IGNORE_INDEX
    # Like F.cross_entropy: the mean over counted targets, NaN when there are none.
    count = valid.sum().to(torch.float32)
    # d loss / d logits of row i is (softmax_i - one_hot_i) * row_scale_i. The scale is
    # applied to the (N, C) operands rather than to the (N, V) gradient: one pass fewer over
    # the largest buffer.
    row_scale = (valid.to(torch.float32) / count)[:, None]
    w = weight.to(compute_dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), chunk):
        end = min(start + chunk, hidden.size(0))
        h = hidden[start:end].to(compute_dtype)
        ids = targets[start:end].clamp(min=0)[:, None]
        log_probs = torch.log_softmax(h @ w.T, dim=-1, dtype=torch.float32)
        picked = log_probs.gather(1, ids)
        total -= (picked * row_scale[start:end]).sum()
        if gradients is None:
            continue
        grad_hidden, grad_weight = gradients
        probs = log_probs.exp_()  # in place: the chunk's one large buffer is reused
        probs.scatter_add_(1, ids, torch.full_like(picked, -1.0))
        grad_logits = probs.to(compute_dtype)
        # The scale is multiplied in float32, so bf16 rounds each product once, as it rounds
        # each gradient element once in the plain path.
        scale = row_scale[start:end]
        grad_hidden[start:end] = (grad_logits @ w) * scale
        scaled_h = (hidden[start:end] * scale).to(compute_dtype)
        if grad_weight.dtype == compute_dtype:
            grad_weight.addmm_(grad_logits.T, scaled_h)  # accumulates inside the GEMM
        else:
            grad_weight += grad_logits.T @ scaled_h
    return total
