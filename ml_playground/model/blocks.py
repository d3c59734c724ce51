"""The two transformer blocks a GPT can be built from, chosen by `GPTConfig.arch`.

`gpt2`: GPT-2 (2019): LayerNorm, one fused query/key/value matmul, a GELU MLP four times
the width; positions come from a learned table added to the token embeddings.
`llama`: what current small models use (Llama, Qwen, nanochat): RMSNorm, rotary positions
inside attention, optionally RMS-normalised queries and keys (QK-norm), fewer key/value
heads than query heads if wanted, a gated SiLU MLP (SwiGLU), no biases.

Both are pre-norm: normalise, transform, add back to the residual stream. Parameter names
are what the GGUF exporter maps onto llama.cpp's tensors; projections onto the residual
stream end in `c_proj`, which is how the model finds them for their scaled init.
"""

from __future__ import annotations

from torch import Tensor, nn

from ml_playground.model.attention import Cache, attend
from ml_playground.model.config import NORM_EPS, GPTConfig
from ml_playground.model.rope import apply_rotary

Rotary = tuple[Tensor, Tensor]  # cos, sin for the positions of this forward pass


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
        b, t, c = x.shape
        qkv: Tensor = self.c_attn(x)
        q, k, v = (
            part.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
            for part in qkv.chunk(3, dim=2)
        )
        visible = None
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
            visible = cache.visible
        y = attend(q, k, v, self.dropout if self.training else 0.0, visible)
        out: Tensor = self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))
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
        b, t, c = x.shape
        q = self.c_q(x).view(b, t, self.n_head, self.head_dim)
        k = self.c_k(x).view(b, t, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            # Under autocast the projections come out in bfloat16 while the gains stay
            # float32; torch's fused RMSNorm needs one dtype (else a slower path and a
            # warning), so the norm runs in the gains' dtype and rounds back once.
            gain = self.q_norm.weight.dtype
            q = self.q_norm(q.to(gain)).to(q.dtype)
            k = self.k_norm(k.to(gain)).to(k.dtype)
        cos, sin = rotary
        q = apply_rotary(q.transpose(1, 2), cos, sin)
        k = apply_rotary(k.transpose(1, 2), cos, sin)
        visible = None
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
            visible = cache.visible
        y = attend(q, k, v, self.dropout if self.training else 0.0, visible)
        out: Tensor = self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))
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
        hidden = nn.functional.silu(self.gate(x)) * self.up(x)
        out: Tensor = self.dropout(self.c_proj(hidden))
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
