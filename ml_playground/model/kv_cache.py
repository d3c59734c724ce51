"""The KV cache generation keeps per layer, and `CacheSlot`, one decoded token's place in it.

The model (`gpt.py`) writes each layer's keys and values through `Cache.update` and masks
its attention with `Cache.visible`; the decode loop (`ml_playground.sample`) advances,
slides and resets the cache between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
