"""Rotary position embeddings (Su et al., 2021) in the layout llama.cpp's `llama` graph uses.

Each head vector is read as head_dim/2 pairs of adjacent values, (x0, x1), (x2, x3), ...;
pair i at position p is rotated by the angle p * base^(-2i/head_dim). Because a query at
position p and a key at position q are rotated by p and q, their dot product depends only on
p - q: attention sees relative positions, which is what lets a KV cache slide past the
training context (see `KVCache.drop_oldest`).

Adjacent pairs (llama.cpp's "normal" rope) rather than Hugging Face Llama's split halves
mean the weights go into a GGUF `llama` file as they are; the two layouts differ only by a
fixed permutation of each head's query and key rows, which transformers' GGUF reader
undoes when it loads such a file.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_angles(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin (T, head_dim/2) in float32 for integer `positions` (T,).

    Computed per call rather than from a table sized to block_size, so positions past the
    training context (a sliding generation window) cost nothing extra and never run out.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = base ** (-exponents / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the adjacent pairs of `x` (B, heads, T, head_dim) by the angles of `cos`/`sin`.

    Each pair is read as a complex number and multiplied by cos + i*sin: the same products
    and sums as rotating the even and odd values apart (bitwise equal in float32), in one
    contiguous kernel each way instead of several strided ones, which took an eighth of a
    small llama training step.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2).contiguous()
    rotated = torch.view_as_complex(pairs) * torch.complex(cos, sin)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
