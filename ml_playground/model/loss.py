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

from collections.abc import Callable
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


@dataclass(frozen=True)
class ReplacedRows:
    """Rows of the output matrix that stand in for the stored ones, and train.

    A fine-tune that adds tokens to a frozen vocabulary trains only their rows (peft's
    trainable tokens): the matrix the loss multiplies by is `weight` with rows `indices`
    replaced by `values`, and only `values` gets a gradient, so the frozen (V, C) matrix is
    neither copied per step nor given a (V, C) float32 gradient.
    """

    indices: Tensor  # (K,) int64 row ids
    values: Tensor  # (K, C)


def vocab_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    softcap: float | None = None,
    replaced: ReplacedRows | None = None,
    chunk_rows: int | None = None,
    softmax_rows: int | None = None,
) -> Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, with IGNORE_INDEX skipped.

    hidden (N, C), weight (V, C), targets (N,). Equal, up to float rounding, to
    `F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX)`, and
    differentiable in `hidden`, `weight` and `replaced.values` (a gradient is computed only
    for those that require one). `softcap` applies Gemma's final-logit soft-capping,
    `cap * tanh(logits / cap)`, before the softmax. Under autocast the matmuls run in the
    autocast dtype and the softmax in float32, as autocast does for the plain path.
    `chunk_rows` and `softmax_rows` override how many tokens a chunk and a softmax slice
    hold (by default about CHUNK_BYTES and SOFTMAX_ELEMENTS of logits).
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, C) and targets (N,), got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    compute_dtype = _compute_dtype(hidden)
    vocab = weight.size(0)
    shape = _Shape(
        chunk=chunk_rows or max(1, CHUNK_BYTES // (vocab * compute_dtype.itemsize)),
        softmax=softmax_rows or max(1, SOFTMAX_ELEMENTS // vocab),
        softcap=softcap,
    )
    return _loss_outside_graph(hidden, weight, targets, compute_dtype, shape, replaced)


def _eager_loss(  # noqa: PLR0917 - the arguments vocab_cross_entropy resolved
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    compute_dtype: torch.dtype,
    shape: _Shape,
    replaced: ReplacedRows | None,
) -> Tensor:
    """The loss with gradients computed on the spot where autograd needs them, else the
    value alone."""
    indices = None if replaced is None else replaced.indices
    values = None if replaced is None else replaced.values
    with torch.autocast(hidden.device.type, enabled=False):
        differentiable = [hidden, weight] + ([] if values is None else [values])
        if torch.is_grad_enabled() and any(t.requires_grad for t in differentiable):
            loss: Tensor = _FusedLoss.apply(
                hidden, weight, values, targets, indices, compute_dtype, shape
            )
            return loss
        return _chunked_loss(
            _Operands(hidden, weight, targets, indices, values),
            compute_dtype,
            shape,
            gradients=None,
        )


# torch.compile traces a model's forward into one graph; this loss stays out of it (a graph
# break, eager code between the compiled trunk and its backward). Dynamo cannot trace it:
# the autograd Function computes its gradients in forward and hands them to backward on
# ctx, which dynamo refuses as intermediates escaping a higher-order op, and its scratch
# buffers are module state. Nor would tracing pay: the loss is two large matmuls per chunk
# and a softmax over cache-sized slices, already memory-lean, where a compiler's gain is
# in fusing many small element-wise ops.
_loss_outside_graph: Callable[
    [Tensor, Tensor, Tensor, torch.dtype, _Shape, ReplacedRows | None], Tensor
] = torch.compiler.disable(_eager_loss)  # type: ignore[no-untyped-call] # torch leaves disable() unannotated


@dataclass(frozen=True)
class _Shape:
    chunk: int
    softmax: int
    softcap: float | None


@dataclass(frozen=True)
class _Operands:
    hidden: Tensor
    weight: Tensor
    targets: Tensor
    indices: Tensor | None
    values: Tensor | None


@dataclass(frozen=True)
class _Gradients:
    """Buffers the forward pass fills with the gradients of the mean loss; None where the
    input needs none."""

    hidden: Tensor | None
    weight: Tensor | None  # float32 accumulator
    values: Tensor | None  # float32 accumulator


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
        values: Tensor | None,
        targets: Tensor,
        indices: Tensor | None,
        compute_dtype: torch.dtype,
        shape: _Shape,
    ) -> Tensor:
        needs_hidden, needs_weight, needs_values = ctx.needs_input_grad[:3]
        gradients = _Gradients(
            hidden=torch.empty_like(hidden) if needs_hidden else None,
            weight=torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None,
            values=(
                torch.zeros_like(values, dtype=torch.float32)
                if needs_values and values is not None
                else None
            ),
        )
        loss = _chunked_loss(
            _Operands(hidden, weight, targets, indices, values),
            compute_dtype,
            shape,
            gradients=gradients,
        )
        ctx.grads = (
            gradients.hidden,
            None if gradients.weight is None else gradients.weight.to(weight.dtype),
            None
            if gradients.values is None or values is None
            else gradients.values.to(values.dtype),
        )
        return loss

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        (grad_loss,) = grad_outputs
        grads: tuple[Tensor | None, ...] = ctx.grads
        del ctx.grads  # a second backward through the same loss is an error, as usual
        scaled = tuple(None if g is None else g * grad_loss for g in grads)
        return (*scaled, None, None, None, None)


def _chunked_loss(
    operands: _Operands,
    compute_dtype: torch.dtype,
    shape: _Shape,
    *,
    gradients: _Gradients | None,
) -> Tensor:
    """The mean loss; with `gradients`, also fills those buffers with the gradient of the
    mean loss (the matrix gradients accumulated in float32)."""
    hidden, targets = operands.hidden, operands.targets
    valid = targets != IGNORE_INDEX
    # Like F.cross_entropy: the mean over counted targets, NaN when there are none.
    count = valid.sum().to(torch.float32)
    # d loss / d logits of row i is (softmax_i - one_hot_i) * row_scale_i. The scale is
    # applied in float32 to the (N, C) operands rather than to the (N, V) gradient: one pass
    # fewer over the largest buffer, and bf16 still rounds each product once.
    row_scale = (valid.to(torch.float32) / count)[:, None]
    ids = targets.clamp(min=0)[:, None]
    w = operands.weight.to(compute_dtype)
    w_t = _right_operand(w)
    values = None if operands.values is None else operands.values.to(compute_dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), shape.chunk):
        end = min(start + shape.chunk, hidden.size(0))
        h = hidden[start:end].to(compute_dtype)
        # Becomes d loss / d logits (unscaled) below, in place.
        logits = torch.mm(h, w_t, out=_scratch("logits", (end - start, w.size(0)), w))
        if operands.indices is not None and values is not None:
            # The replaced rows' columns, computed apart: the stored matrix is used as it
            # is, never copied with the rows swapped in.
            logits[:, operands.indices] = h @ values.T
        for first in range(0, end - start, shape.softmax):
            last = min(first + shape.softmax, end - start)
            part, at = slice(first, last), slice(start + first, start + last)
            log_probs, squash = _log_softmax(logits[part], shape.softcap)
            picked = log_probs.gather(1, ids[at])
            total -= (picked * row_scale[at]).sum()
            if gradients is not None:
                probs = log_probs.exp_()
                probs.scatter_add_(1, ids[at], torch.full_like(picked, -1.0))
                if squash is not None:  # d cap*tanh(z/cap) / dz = 1 - tanh(z/cap)^2
                    probs.mul_(squash)
                logits[part] = probs
        if gradients is not None:
            _chunk_gradients(operands, gradients, logits, (w, values), row_scale, (start, end))
    return total


# Output matrices up to this size get a contiguous transposed copy for the logits GEMM.
# oneDNN's bf16 GEMM ran ~1.5x faster on one than on the transposed view for the medium
# GPT's (50k x 384) matrix, where the copy costs ~20 ms a step. For a Qwen-sized (152k x
# 896) matrix on an AVX512-BF16 CPU without AMX the view was instead 1.7x faster, and the
# copy would hold 272 MB (545 MB in float32) of the memory a LoRA run is short of.
TRANSPOSED_COPY_BYTES = 64 << 20


def _right_operand(w: Tensor) -> Tensor:
    """`w.T` for the logits GEMM: a reused contiguous copy when the matrix is small."""
    if w.numel() * w.element_size() > TRANSPOSED_COPY_BYTES:
        return w.T
    w_t = _scratch("weight_t", (w.size(1), w.size(0)), w)
    return w_t.copy_(w.T)


def _log_softmax(logits: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """float32 log-probabilities of a slice of logits, and with a soft cap the factor
    (1 - tanh^2) its gradient is multiplied by."""
    if softcap is None:
        return torch.log_softmax(logits, dim=-1, dtype=torch.float32), None
    squashed = torch.tanh(logits.float() / softcap)
    log_probs = torch.log_softmax(squashed * softcap, dim=-1)
    return log_probs, squashed.square_().neg_().add_(1.0)


def _chunk_gradients(  # noqa: PLR0917 - a step of _chunked_loss, split out to read it
    operands: _Operands,
    gradients: _Gradients,
    grad_logits: Tensor,
    matrices: tuple[Tensor, Tensor | None],
    row_scale: Tensor,
    span: tuple[int, int],
) -> None:
    """Add one chunk's share to the gradient buffers, given its d loss / d logits and the
    stored matrix with the replaced rows' values (in the compute dtype)."""
    start, end = span
    w, values = matrices
    compute_dtype = grad_logits.dtype
    scale = row_scale[start:end]
    replaced = None
    if operands.indices is not None and values is not None:
        # The replaced columns take their share through `values`; zeroed, the rest flows
        # through the stored matrix as if they were not there.
        replaced = grad_logits[:, operands.indices]
        grad_logits.index_fill_(1, operands.indices, 0.0)
    if gradients.hidden is not None:
        grad_hidden = grad_logits @ w
        if replaced is not None and values is not None:
            grad_hidden.addmm_(replaced, values)
        gradients.hidden[start:end] = grad_hidden * scale
    if gradients.weight is None and gradients.values is None:
        return
    scaled_h = (operands.hidden[start:end] * scale).to(compute_dtype)
    if gradients.values is not None and replaced is not None:
        gradients.values.add_(replaced.T @ scaled_h)
    if gradients.weight is not None:
        if gradients.weight.dtype == compute_dtype:
            gradients.weight.addmm_(grad_logits.T, scaled_h)  # accumulates inside the GEMM
        else:
            gradients.weight.add_(grad_logits.T @ scaled_h)


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
