"""A GPT-2-style decoder-only transformer, small enough to read in one sitting.

Parameter names follow GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`, `lm_head`,
...) because the GGUF exporter maps them one to one onto llama.cpp's `gpt2` tensors.
For generation, `forward_cached` keeps the keys and values of earlier tokens in a `KVCache`
instead of recomputing the whole context for every new token; the decode loop and the
sampling filters live in `ml_playground.sample`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias for torch's functional API
from pydantic import Field, model_validator
from torch import Tensor, nn

from ml_playground.artifacts import Artifact, parse_artifact
from ml_playground.errors import CheckpointError
from ml_playground.model.loss import vocab_cross_entropy

# Matmuls over a vocabulary padded to a multiple of 64 map onto faster GPU kernels.
VOCAB_PAD_MULTIPLE = 64
# GPT-2's values; the GGUF exporter writes the same epsilon into the file's metadata.
LAYER_NORM_EPS = 1e-5
INIT_STD = 0.02
OLDER_CHECKPOINT = "it was not written by this version of ml-playground; retrain or re-save it"


Size = Annotated[int, Field(ge=1)]


class GPTConfig(Artifact):
    """Shape of a GPT (its checkpoint's model_args)."""

    vocab_size: Size
    block_size: Size
    n_layer: Size
    n_head: Size
    n_embd: Size
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    bias: bool = False

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> GPTConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")
        return self

    @property
    def padded_vocab_size(self) -> int:
        """`vocab_size` rounded up to a multiple of 64; the extra ids are never sampled."""
        multiples = -(-self.vocab_size // VOCAB_PAD_MULTIPLE)
        return multiples * VOCAB_PAD_MULTIPLE

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def replace(self, **changes: int | float | bool) -> GPTConfig:
        """A copy with `changes`, validated like any other."""
        return GPTConfig.model_validate({**self.to_json(), **changes})

    def to_dict(self) -> dict[str, int | float | bool]:
        """Plain JSON-compatible values, the form checkpoints store."""
        return self.to_json()

    @classmethod
    def from_dict(
        cls, d: Mapping[str, object], *, source: str = "checkpoint model_args"
    ) -> GPTConfig:
        """Rebuild a config from `to_dict` output, rejecting anything a checkpoint should not hold.

        Every key is required, even those with defaults: a checkpoint missing `bias` would
        otherwise load into a model of a different shape and fail later, far from the cause.
        """
        missing = sorted(set(cls.model_fields) - d.keys())
        if missing:
            raise CheckpointError(f"{source} is missing {', '.join(missing)}; {OLDER_CHECKPOINT}")
        return parse_artifact(cls, dict(d), source, error=CheckpointError, remedy=OLDER_CHECKPOINT)


class KVCache:
    """Keys and values of the tokens seen so far, in one preallocated buffer per layer.

    Each buffer has room for `capacity` positions, so adding a token is a copy into place
    rather than a reallocation. `length` counts the filled positions; all layers share it.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        capacity: int,
        head_dim: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, n_head, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.capacity = capacity
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `k`, `v` (B, n_head, T, head_dim) after the filled positions; return all so far."""
        end = self.length + k.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions, capacity is {self.capacity}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled, once every layer has stored them."""
        self.length += n

    def reset(self) -> None:
        self.length = 0


def _attend(q: Tensor, k: Tensor, v: Tensor, past: int, dropout_p: float) -> Tensor:
    """Causal attention for queries at positions past..past+T-1 over keys 0..past+T-1."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
        # torch's CPU flash-attention backward runs about 2x slower in bfloat16 than in
        # float32 (profiled on an AMX Xeon, torch 2.15); attention is a small share of a
        # step's FLOPs, so bf16 training on the CPU attends in float32.
        with torch.autocast("cpu", enabled=False):
            return _attend(q.float(), k.float(), v.float(), past, dropout_p).to(q.dtype)
    t = q.size(2)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if t == 1:
        # The newest token may look at every cached position, so there is nothing to mask.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # is_causal aligns its mask to the top-left corner, which is wrong once the queries start
    # after cached keys, so the bottom-right-aligned mask is spelled out.
    mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer_index = layer_index
        # One matmul produces queries, keys and values for all heads at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        b, t, c = x.shape
        qkv: Tensor = self.c_attn(x)
        q, k, v = (
            part.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
            for part in qkv.chunk(3, dim=2)
        )
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_index, k, v)
        y = _attend(q, k, v, past, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        out: Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation, and llama.cpp's gpt2 graph uses it too,
        # so an exported model computes exactly what was trained.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: normalise, transform, add back to the residual stream."""

    def __init__(self, config: GPTConfig, layer_index: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class _Trunk(nn.Module):
    """Embeddings, blocks and final norm, grouped so parameter names read `transformer.*`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=LAYER_NORM_EPS, bias=config.bias)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = _Trunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): reading a token in and predicting it out use the
        # same embedding space, and sharing the largest matrix of a small model saves V*d
        # parameters without hurting quality.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(_init_weights)
        # Every block adds two projections (attention, MLP) onto the residual stream, so its
        # variance grows with depth; GPT-2 scales their init by 1/sqrt(2 * n_layer) so the
        # stream keeps roughly unit scale at init however deep the model is.
        residual_std = INIT_STD / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, last_only: bool = False
    ) -> Tensor:
        """Logits (B, T, padded_vocab_size) for token ids `idx` (B, T); with `targets` (B, T)
        instead the mean cross-entropy against them (a scalar), target -1 ignored.
        `last_only` returns the logits of the last position only (B, 1, V).

        The loss never materialises the logits (see model/loss.py): for a 50k vocabulary they
        are the largest tensor of a training step by far.
        """
        t = idx.size(1)
        if t > self.config.block_size:
            raise ValueError(
                f"sequence length {t} exceeds block_size {self.config.block_size}; "
                f"pass at most the last {self.config.block_size} tokens"
            )
        if targets is None:
            return self._logits(idx, start=0, cache=None, last_only=last_only)
        hidden = self._hidden(idx, start=0, cache=None)
        return vocab_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def forward_cached(self, idx: Tensor, cache: KVCache, *, last_only: bool = False) -> Tensor:
        """Logits for `idx` (B, T) following the tokens already in `cache`, which is extended.

        Equal to the matching positions of `forward` over the whole sequence. `last_only`
        returns just the last position (B, 1, V), all that generation needs.
        """
        t = idx.size(1)
        if cache.length + t > cache.capacity:
            raise ValueError(
                f"{cache.length} cached + {t} new tokens exceed block_size {cache.capacity}"
            )
        logits = self._logits(idx, start=cache.length, cache=cache, last_only=last_only)
        cache.advance(t)
        return logits

    def _logits(
        self, idx: Tensor, start: int, cache: KVCache | None, *, last_only: bool = False
    ) -> Tensor:
        x = self._hidden(idx, start, cache)
        if last_only:
            # The vocabulary projection is the largest matmul of a small model; generation
            # needs it for the newest position only.
            x = x[:, -1:, :]
        logits: Tensor = self.lm_head(x)
        return logits

    def _hidden(self, idx: Tensor, start: int, cache: KVCache | None) -> Tensor:
        """The final-norm hidden states (B, T, n_embd) of `idx` at positions start.."""
        trunk = self.transformer
        positions = torch.arange(start, start + idx.size(1), device=idx.device)
        x: Tensor = trunk.drop(trunk.wte(idx) + trunk.wpe(positions))
        for block in trunk.h:
            x = block(x, cache)
        out: Tensor = trunk.ln_f(x)
        return out

    def new_kv_cache(self, batch_size: int) -> KVCache:
        """An empty cache for `batch_size` sequences, on the model's device and dtype."""
        c = self.config
        weight = self.transformer.wte.weight
        return KVCache(
            c.n_layer,
            batch_size,
            c.n_head,
            c.block_size,
            c.head_dim,
            device=weight.device,
            dtype=weight.dtype,
        )

    def next_token_logits(self, logits: Tensor) -> Tensor:
        """The last position of `logits` (B, T, V) as (B, V), with padded ids set to -inf.

        Padded ids never occur in training data, yet their logits are finite; unmasked,
        sampling could emit an id that no tokenizer can decode.
        """
        last = logits[:, -1, :]
        padded = torch.arange(last.size(-1), device=last.device) >= self.config.vocab_size
        return last.masked_fill(padded, float("-inf"))

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameter count, each tied tensor once.

        `exclude_embeddings` leaves out the position table, a lookup that costs no FLOPs. The
        token table stays: tied to `lm_head`, it is also the output projection's matmul.
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.transformer.wpe.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Approximate training FLOPs per token at full context (PaLM paper, appendix B).

        6N: each parameter does a multiply-add (2 FLOPs) forward and twice that backward.
        12*L*d*T: attention scores and their weighted sum, matmuls with no parameters.
        """
        c = self.config
        return 6 * self.num_parameters() + 12 * c.n_layer * c.n_embd * c.block_size


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: small normal weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        # torch types `bias` as Parameter, yet `bias=False` registers it as None.
        if module.bias is not None:  # pyright: ignore[reportUnnecessaryComparison]
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
