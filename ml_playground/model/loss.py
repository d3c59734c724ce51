"""Cross-entropy over a large vocabulary without materialising the (tokens x vocab) logits.

For a small GPT with GPT-2's 50k vocabulary the output layer dominates memory traffic: a
batch of 16 x 256 tokens has 206M logits, 824 MB in float32. The plain path writes them,
converts them to float32 under autocast, writes log-probabilities, then allocates, zero-fills
and writes a gradient of the same size; on a CPU that is seconds of memory traffic per step
and the reason bfloat16 autocast gained little there.

`vocab_cross_entropy` instead walks the tokens in chunks. For each chunk it computes the
logits in the matmul dtype, then, a few rows at a time so the float32 work stays in the CPU
cache, their log-softmax and, when training, the gradient (softmax - one_hot), written over
the logits in place. Two matmuls turn that into the gradients of the hidden states and of
the output matrix before the next chunk reuses the memory; backward only scales what
forward kept. The matmuls are the same as the plain path's; what disappears is the
full-size float32 logits and every pass over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# One ignore index for every loss in the package: the batches mark untrained targets with
# it (PyTorch's and Hugging Face's -100), and this loss and the HF trainer's skip them.
from ml_playground.data.batches import IGNORE_INDEX

# Bytes of logits per chunk in the matmul dtype (128 MB: 64M bfloat16 or 32M float32
# values). Chunks this large keep the matmuls efficient, and in bfloat16 they keep rare
# the float32 additions of each chunk's output-matrix gradient (a float32 GEMM adds in
# place); a smaller chunk would save memory but pay that addition more often.
CHUNK_BYTES = 1 << 27
# Logits per softmax slice within a chunk (1M: 4 MB in float32), sized to stay in cache.
SOFTMAX_ELEMENTS = 1 << 20


def vocab_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_rows: int | None = None,
    softmax_rows: int | None = None,
) -> Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, with IGNORE_INDEX skipped.

    hidden (N, C), weight (V, C), targets (N,). Equal, up to float rounding, to
    `F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX)`, and differentiable in
    `hidden` and `weight`. Under autocast the matmuls run in the autocast dtype and the
    softmax in float32, as autocast does for the plain path. `chunk_rows` and
    `softmax_rows` override how many tokens a chunk and a softmax slice hold (by default
    about CHUNK_BYTES and SOFTMAX_ELEMENTS of logits).
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, C) and targets (N,), got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    compute_dtype = _compute_dtype(hidden)
    vocab = weight.size(0)
    rows = _Rows(
        chunk=chunk_rows or max(1, CHUNK_BYTES // (vocab * compute_dtype.itemsize)),
        softmax=softmax_rows or max(1, SOFTMAX_ELEMENTS // vocab),
    )
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            loss: Tensor = _FusedLoss.apply(hidden, weight, targets, compute_dtype, rows)
            return loss
        return _chunked_loss(hidden, weight, targets, compute_dtype, rows, gradients=None)


@dataclass(frozen=True)
class _Rows:
    chunk: int
    softmax: int


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
        rows: _Rows,
    ) -> Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        loss = _chunked_loss(
            hidden, weight, targets, compute_dtype, rows, gradients=(grad_hidden, grad_weight)
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
    rows: _Rows,
    *,
    gradients: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """The mean loss; with `gradients` = (d hidden, d weight) buffers, also fills those with
    the gradient of the mean loss (d weight accumulated in float32)."""
    valid = targets != IGNORE_INDEX
    # Like F.cross_entropy: the mean over counted targets, NaN when there are none.
    count = valid.sum().to(torch.float32)
    # d loss / d logits of row i is (softmax_i - one_hot_i) * row_scale_i. The scale is
    # applied in float32 to the (N, C) operands rather than to the (N, V) gradient: one pass
    # fewer over the largest buffer, and bf16 still rounds each product once.
    row_scale = (valid.to(torch.float32) / count)[:, None]
    ids = targets.clamp(min=0)[:, None]
    w = weight.to(compute_dtype)
    # CPU GEMMs (oneDNN's bf16 ones above all) run faster on a contiguous right-hand
    # operand than on a transposed view; one copy of the matrix serves every chunk.
    w_t = _scratch("weight_t", (w.size(1), w.size(0)), w)
    w_t.copy_(w.T)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), rows.chunk):
        end = min(start + rows.chunk, hidden.size(0))
        h = hidden[start:end].to(compute_dtype)
        # Becomes d loss / d logits (unscaled) below, in place.
        logits = torch.mm(h, w_t, out=_scratch("logits", (end - start, w.size(0)), w))
        for first in range(0, end - start, rows.softmax):
            last = min(first + rows.softmax, end - start)
            part, at = slice(first, last), slice(start + first, start + last)
            log_probs = torch.log_softmax(logits[part], dim=-1, dtype=torch.float32)
            picked = log_probs.gather(1, ids[at])
            total -= (picked * row_scale[at]).sum()
            if gradients is not None:
                probs = log_probs.exp_()
                probs.scatter_add_(1, ids[at], torch.full_like(picked, -1.0))
                logits[part] = probs
        if gradients is None:
            continue
        grad_hidden, grad_weight = gradients
        scale = row_scale[start:end]
        grad_hidden[start:end] = (logits @ w) * scale
        scaled_h = (hidden[start:end] * scale).to(compute_dtype)
        if grad_weight.dtype == compute_dtype:
            grad_weight.addmm_(logits.T, scaled_h)  # accumulates inside the GEMM
        else:
            grad_weight += logits.T @ scaled_h
    return total


# Buffers reused from call to call, keyed by name, dtype and device. Freshly allocated,
# each chunk's logits (up to CHUNK_BYTES) would be new pages from the OS at every step,
# since large allocations bypass the C allocator's free lists: profiling the shakespeare
# preset showed a third of its CPU time in the kernel, zero-filling pages on first touch.
# They never escape: gradients and the loss are separate tensors.
_SCRATCH: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


def _scratch(name: str, shape: tuple[int, int], like: Tensor) -> Tensor:
    """A reusable (uninitialised) buffer of `shape` with `like`'s dtype and device."""
    key = (name, like.dtype, like.device)
    needed = shape[0] * shape[1]
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < needed:
        # A normal tensor even when first needed under inference_mode, so that later
        # calls with autograd on may still write into it.
        with torch.inference_mode(False):
            buffer = torch.empty(needed, dtype=like.dtype, device=like.device)
        _SCRATCH[key] = buffer
    return buffer[:needed].view(shape)
