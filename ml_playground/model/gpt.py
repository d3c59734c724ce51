"""A decoder-only transformer in two architectures, small enough to read in one sitting.

`arch = "gpt2"` is GPT-2 (2019): learned positions, LayerNorm, one fused query/key/value
matmul, a GELU MLP. `arch = "llama"` is what current small models use (Llama, Qwen,
nanochat): rotary positions, RMSNorm, optional QK-norm and grouped-query attention, a gated
MLP (SwiGLU), no biases. Both blocks are pre-norm: normalise, transform, add back to the
residual stream. Parameter names follow GPT-2 (`transformer.h.0.attn.c_proj`, `lm_head`)
because the GGUF exporter maps them one to one onto llama.cpp's tensors; projections onto
the residual stream end in `c_proj`, which is how their scaled init finds them. For
generation `forward_cached` keeps earlier keys and values in a `KVCache` (`kv_cache.py`);
the decode loop lives in `ml_playground.sample`.
Shapes: B batch, T positions of this pass, C n_embd, H heads, Hkv key/value heads,
D head_dim, S key positions (cached and new), V padded vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias for torch's functional API
from torch import Tensor, nn

from ml_playground.model.config import NORM_EPS, GPTConfig
from ml_playground.model.kv_cache import Cache, CacheSlot, KVCache
from ml_playground.model.loss import vocab_cross_entropy
from ml_playground.model.vocab import mask_padded

INIT_STD = 0.02

Rotary = tuple[Tensor, Tensor]  # cos, sin (T, D/2) for the positions of this forward pass


# --- rotary positions (Su et al., 2021), in the layout of llama.cpp's `llama` graph ------
# Each head vector is read as D/2 pairs of adjacent values, (x0, x1), (x2, x3), ...; pair i
# at position p is rotated by p * base^(-2i/D). Query and key rotated by their positions p
# and q have a dot product that depends only on p - q: attention sees relative positions,
# which lets a KV cache slide past the training context (`KVCache.drop_oldest`). Adjacent
# pairs (llama.cpp's "normal" rope) rather than Hugging Face Llama's split halves put the
# weights into a GGUF `llama` file as they are; the layouts differ by a fixed permutation of
# each head's query and key rows, which transformers' GGUF reader undoes.


def rotary_angles(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin (T, D/2) in float32 for integer `positions` (T,). Computed per call, not
    from a table sized to block_size, so positions past the training context (a sliding
    generation window) cost nothing extra and never run out."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = base ** (-exponents / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the adjacent pairs of `x` (B, H, T, D) by the angles of `cos`/`sin`.

    Each pair is read as a complex number and multiplied by cos + i*sin: the products and
    sums of rotating the even and odd values apart (bitwise equal in float32), in one
    contiguous kernel each way instead of several strided ones (an eighth of a small llama
    training step)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2).contiguous()  # (B, H, T, D/2, 2)
    rotated = torch.view_as_complex(pairs) * torch.complex(cos, sin)  # (B, H, T, D/2) complex
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)  # (B, H, T, D)


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
        # (B, Hkv, S, D) -> (B, H, S, D), each key/value head repeated for its query heads
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


def attend_cached(
    q: Tensor, k: Tensor, v: Tensor, cache: Cache | None, layer: int, *, dropout_p: float
) -> Tensor:
    """Store k, v (B, Hkv, T, D) in `cache` if any, attend to all: the output (B, T, C)."""
    visible = None
    if cache is not None:
        k, v = cache.update(layer, k, v)  # (B, Hkv, S, D)
        visible = cache.visible
    y = attend(q, k, v, dropout_p, visible)  # (B, H, T, D)
    return y.transpose(1, 2).flatten(2)  # (B, T, H, D) -> (B, T, C)


class GPT2Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer_index = layer_index
        # One matmul produces queries, keys and values for all heads at once.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cache: Cache | None) -> Tensor:
        b, t, c = x.shape  # (B, T, C)
        qkv: Tensor = self.c_attn(x)  # (B, T, 3C)
        q, k, v = (  # each (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
            part.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
            for part in qkv.chunk(3, dim=2)
        )
        p = self.dropout if self.training else 0.0
        y = attend_cached(q, k, v, cache, self.layer_index, dropout_p=p)
        out: Tensor = self.resid_dropout(self.c_proj(y))
        return out


class GPT2MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.hidden_size, bias=config.bias)
        # GPT-2 was trained with the tanh approximation, and llama.cpp's gpt2 graph uses it too,
        # so an exported model computes exactly what was trained.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class GPT2Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)
        self.attn = GPT2Attention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)
        self.mlp = GPT2MLP(config)

    def forward(self, x: Tensor, rotary: Rotary | None, cache: Cache | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class LlamaAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        self.layer_index = layer_index
        # Separate projections, as llama.cpp's `llama` tensors are: with grouped-query
        # attention the key and value matrices are narrower than the query's.
        kv_width = self.n_kv_head * self.head_dim
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, kv_width, bias=False)
        self.c_v = nn.Linear(config.n_embd, kv_width, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # QK-norm bounds the attention logits, which keeps training stable at higher
        # learning rates (as in OLMo 2, Qwen3 and nanochat).
        self.q_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS) if config.qk_norm else None
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rotary: Rotary, cache: Cache | None) -> Tensor:
        b, t, _ = x.shape  # (B, T, C)
        q = self.c_q(x).view(b, t, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.c_k(x).view(b, t, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        v = self.c_v(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.q_norm is not None and self.k_norm is not None:
            # Under autocast the projections come out in bfloat16 while the gains stay
            # float32; torch's fused RMSNorm needs one dtype (else a slower path and a
            # warning), so the norm runs in the gains' dtype and rounds back once.
            gain = self.q_norm.weight.dtype
            q = self.q_norm(q.to(gain)).to(q.dtype)
            k = self.k_norm(k.to(gain)).to(k.dtype)
        cos, sin = rotary
        q = apply_rotary(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
        k = apply_rotary(k.transpose(1, 2), cos, sin)  # (B, Hkv, T, D)
        p = self.dropout if self.training else 0.0
        y = attend_cached(q, k, v, cache, self.layer_index, dropout_p=p)
        out: Tensor = self.resid_dropout(self.c_proj(y))
        return out


class SwiGLU(nn.Module):
    """silu(gate(x)) * up(x), projected back: a gated MLP (Shazeer, 2020)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.hidden_size, bias=False)
        self.up = nn.Linear(config.n_embd, config.hidden_size, bias=False)
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.c_proj(F.silu(self.gate(x)) * self.up(x)))
        return out


class LlamaBlock(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int) -> None:
        super().__init__()
        self.ln_1 = nn.RMSNorm(config.n_embd, eps=NORM_EPS)
        self.attn = LlamaAttention(config, layer_index)
        self.ln_2 = nn.RMSNorm(config.n_embd, eps=NORM_EPS)
        self.mlp = SwiGLU(config)

    def forward(self, x: Tensor, rotary: Rotary | None, cache: Cache | None) -> Tensor:
        if rotary is None:
            raise ValueError("a llama block needs the rotary angles of its positions")
        x = x + self.attn(self.ln_1(x), rotary, cache)
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


class _Trunk(nn.Module):
    """Embeddings, blocks and final norm, grouped so parameter names read `transformer.*`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.ln_f: nn.Module
        if config.arch == "gpt2":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
            self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)
        else:
            self.h = nn.ModuleList(LlamaBlock(config, i) for i in range(config.n_layer))
            self.ln_f = nn.RMSNorm(config.n_embd, eps=NORM_EPS)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = _Trunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying (Press & Wolf, 2017): reading a token in and predicting it out use
            # the same embedding space, and sharing the largest matrix of a small model saves
            # V*d parameters (with GPT-2's 50k vocabulary, most of a small preset's).
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
        """Logits (B, T, V) for token ids `idx` (B, T), or (B, 1, V) with `last_only`; with
        `targets` (B, T) instead the mean cross-entropy against them (a scalar), skipping
        targets equal to IGNORE_INDEX (-100, PyTorch's default). The loss never materialises
        the logits (model/loss.py): for a 50k vocabulary they are a step's largest tensor.
        """
        t = idx.size(1)
        if t > self.config.block_size:
            raise ValueError(
                f"sequence length {t} exceeds block_size {self.config.block_size}; "
                f"pass at most the last {self.config.block_size} tokens"
            )
        if targets is None:
            return self._logits(idx, cache=None, last_only=last_only)
        hidden = self._hidden(idx, None, torch.arange(t, device=idx.device))
        # (B, T, C) -> (B*T, C) rows against (B*T,) targets
        return vocab_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def forward_cached(self, idx: Tensor, cache: KVCache, *, last_only: bool = False) -> Tensor:
        """Logits for `idx` (B, T) following the tokens already in `cache`, which is extended:
        the matching positions of `forward` over the whole sequence (`last_only` as there).
        """
        t = idx.size(1)
        if cache.length + t > cache.capacity:
            raise ValueError(
                f"{cache.length} cached + {t} new tokens exceed block_size {cache.capacity}"
            )
        if self.config.arch == "gpt2" and cache.position + t > self.config.block_size:
            raise ValueError(
                f"positions past block_size {self.config.block_size} have no learned "
                "embedding; reset the cache and prefill the newest tokens"
            )
        logits = self._logits(idx, cache=cache, last_only=last_only)
        cache.advance(t)
        return logits

    def decode(self, idx: Tensor, slot: CacheSlot, head: Tensor) -> Tensor:
        """Next-token logits (B, vocab_size) after one token per row `idx` (B, 1), stored at
        `slot` of its cache, through `head` (`decoding_head()`); the caller advances the cache.

        The numbers of `next_token_logits(forward_cached(idx, cache))` without the padded
        columns, but every shape is fixed and every position a tensor, so a compiled decode
        step (sample/gpt.py) runs one graph for all tokens.
        """
        x = self._hidden(idx, slot, slot.position)
        logits: Tensor = x[:, -1, :] @ head
        return logits

    def decoding_head(self) -> Tensor:
        """The output matrix for `decode`: the tokenizer's rows of lm_head as a contiguous
        (C, vocab_size) copy, taken once per loaded model (the embedding's size again).

        One token's logits are a vector-matrix product over a small model's largest matrix;
        on the CPU torch reads Linear's (V, C) layout 2-3.5x slower for it than this one
        (float32, 50k x 128 and 50k x 384, a 2-core EPYC). Padded rows would be masked anyway.
        """
        return self.lm_head.weight[: self.config.vocab_size].t().contiguous()

    def _logits(self, idx: Tensor, cache: KVCache | None, *, last_only: bool = False) -> Tensor:
        start = 0 if cache is None else cache.position
        x = self._hidden(idx, cache, torch.arange(start, start + idx.size(1), device=idx.device))
        if last_only:
            # The vocabulary projection is the largest matmul of a small model; generation
            # needs it for the newest position only.
            x = x[:, -1:, :]
        logits: Tensor = self.lm_head(x)
        return logits

    def _hidden(self, idx: Tensor, cache: Cache | None, positions: Tensor) -> Tensor:
        """The final-norm hidden states (B, T, C) of `idx` at `positions` (T,), after the
        cached ones."""
        trunk, config = self.transformer, self.config
        x: Tensor = trunk.wte(idx)
        rotary: Rotary | None = None
        if config.arch == "gpt2":
            x = x + trunk.wpe(positions)
        else:
            rotary = rotary_angles(positions, config.head_dim, config.rope_base)
        x = trunk.drop(x)
        for block in trunk.h:
            x = block(x, rotary, cache)
        out: Tensor = trunk.ln_f(x)
        return out

    def new_kv_cache(self, batch_size: int) -> KVCache:
        """An empty cache for `batch_size` sequences, on the model's device and dtype."""
        c, weight = self.config, self.transformer.wte.weight
        shape = (c.n_layer, batch_size, c.kv_heads, c.block_size, c.head_dim)
        return KVCache(*shape, device=weight.device, dtype=weight.dtype)

    def next_token_logits(self, logits: Tensor) -> Tensor:
        """The last position of `logits` (B, T, V) as (B, V), with padded ids set to -inf
        (`model/vocab.py`)."""
        return mask_padded(logits[:, -1, :], self.config.vocab_size)

    def num_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameter count, each tied tensor once. `exclude_embeddings` leaves out the
        lookups that cost no FLOPs: GPT-2's position table, and the token table when it is
        not tied to `lm_head` (tied, it is also the output projection's matmul)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if self.config.arch == "gpt2":
                total -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.transformer.wte.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Approximate training FLOPs per token at full context (PaLM paper, appendix B).
        6N: each parameter does a multiply-add (2 FLOPs) forward and twice that backward;
        12*L*d*T: attention scores and their weighted sum, matmuls with no parameters."""
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
