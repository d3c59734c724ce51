"""Causal self-attention pieces shared by both block kinds: the KV cache and `attend`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias for torch's functional API
from torch import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, in one preallocated buffer per layer.

    Each buffer has room for `capacity` positions, so adding a token is a copy into place
    rather than a reallocation. `length` counts the filled positions and `position` is the
    absolute position of the next token; they differ once `drop_oldest` slid the window.
    All layers share both.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        capacity: int,
        head_dim: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, n_kv_head, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.capacity = capacity
        self.length = 0
        self.position = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `k`, `v` (B, n_kv_head, T, head_dim) after the filled positions; return all."""
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions, capacity is {self.capacity}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled, once every layer has stored them."""
        self.length += n
        self.position += n

    def drop_oldest(self, n: int) -> None:
        """Forget the `n` oldest positions, keeping the absolute position of the next token.

        Only correct for relative position encodings (rotary): the kept keys stay valid
        because their rotation encodes where they were, not where they now sit.
        """
        n = min(n, self.length)
        kept = self.length - n
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[:, :, :kept] = buffer[:, :, n : self.length].clone()
        self.length = kept

    def reset(self) -> None:
        self.length = 0
        self.position = 0

    @property
    def visible(self) -> None:
        """`update` returns only the filled positions, so attention needs no mask."""
        return None

    def slot(self) -> CacheSlot:
        """Where the next single token goes, as tensors: see `CacheSlot`."""
        index = torch.tensor([self.length], device=self.keys[0].device)
        return CacheSlot(
            cache=self,
            index=index,
            position=torch.tensor([self.position], device=index.device),
            visible=(torch.arange(self.capacity, device=index.device) <= index)[None, :],
        )


@dataclass(frozen=True)
class CacheSlot:
    """One decoded token's place in a `KVCache`, with every number a tensor.

    `KVCache.update` slices the buffers at Python ints, so each step has new shapes, which
    a compiled step would have to recompile for (or trace symbolically). Through a slot the
    token is written at `index` and attention reads the whole buffer, the positions past
    it masked out: one graph for every step. Reading `capacity` positions rather than the
    filled ones costs little next to the weights a step reads.
    """

    cache: KVCache
    index: Tensor  # (1,) long: the buffer row the token is stored in
    position: Tensor  # (1,) long: its absolute position (differs once the window slid)
    visible: Tensor  # (1, capacity) bool: the rows up to and including `index`

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `k`, `v` (B, n_kv_head, 1, head_dim) at `index`; return the whole buffers."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(2, self.index, k)
        values.index_copy_(2, self.index, v)
        return keys, values


Cache = KVCache | CacheSlot
"""What a block writes its keys and values to: the cache's next positions, or one slot."""


def attend(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float, visible: Tensor | None = None
) -> Tensor:
    """Causal attention of queries (B, H, T, D) that are the last T positions of the keys.

    Keys and values may have fewer heads than the queries (grouped-query attention); each
    of their heads then serves n_head / n_kv_head query heads. `visible` (1, S), for one
    query over a whole `CacheSlot` buffer, marks the keys it may see instead.
    """
    if k.size(1) != q.size(1):
        groups = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
        # torch's CPU flash-attention backward runs about 2x slower in bfloat16 than in
        # float32 (profiled on an AMX Xeon, torch 2.15); attention is a small share of a
        # step's FLOPs, so bf16 training on the CPU attends in float32.
        with torch.autocast("cpu", enabled=False):
            return attend(q.float(), k.float(), v.float(), dropout_p, visible).to(q.dtype)
    if visible is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout_p)
    t, past = q.size(2), k.size(2) - q.size(2)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if t == 1:
        # The newest token may look at every cached position, so there is nothing to mask.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # is_causal aligns its mask to the top-left corner, which is wrong once the queries start
    # after cached keys, so the bottom-right-aligned mask is spelled out.
    mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
