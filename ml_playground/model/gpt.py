"""A decoder-only transformer, small enough to read in one sitting, in two architectures.

`arch = "gpt2"` is GPT-2 (learned positions, LayerNorm, GELU); `arch = "llama"` is what
current small models use (rotary positions, RMSNorm, SwiGLU, optional QK-norm and
grouped-query attention); `model/blocks.py` has both blocks. Parameter names follow GPT-2
(`transformer.wte`, `transformer.h.0.attn.c_proj`, `lm_head`, ...) because the GGUF
exporter maps them one to one onto llama.cpp's tensors. For generation, `forward_cached`
keeps the keys and values of earlier tokens in a `KVCache` instead of recomputing the whole
context for every new token; the decode loop and the sampling filters live in
`ml_playground.sample`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ml_playground.model.attention import Cache, CacheSlot, KVCache
from ml_playground.model.blocks import GPT2Block, LlamaBlock, Rotary
from ml_playground.model.config import NORM_EPS, GPTConfig
from ml_playground.model.loss import vocab_cross_entropy
from ml_playground.model.rope import rotary_angles

INIT_STD = 0.02


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
        """Logits (B, T, padded_vocab_size) for token ids `idx` (B, T); with `targets` (B, T)
        instead the mean cross-entropy against them (a scalar), skipping targets equal to
        IGNORE_INDEX (-100, PyTorch's default).
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
            return self._logits(idx, cache=None, last_only=last_only)
        hidden = self._hidden(idx, None, torch.arange(t, device=idx.device))
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
        `slot` of its cache, through `head` (`decoding_head()`); the caller advances the
        cache.

        The same numbers as `next_token_logits(forward_cached(idx, cache))` without its
        padded columns, but every shape is fixed and every position a tensor, so a compiled
        decode step (sample/gpt.py) runs one graph for all tokens.
        """
        x = self._hidden(idx, slot, slot.position)
        logits: Tensor = x[:, -1, :] @ head
        return logits

    def decoding_head(self) -> Tensor:
        """The output matrix for `decode`: the tokenizer's rows of lm_head, transposed into
        a contiguous (n_embd, vocab_size) copy.

        One token's logits are a vector-matrix product over the largest matrix of a small
        model. On the CPU torch reads Linear's (vocab, n_embd) layout 2-3.5x slower for it
        than this one (float32, 50k x 128 and 50k x 384, a 2-core EPYC); the padded rows
        are left out because they would be masked anyway. The copy is taken once per
        loaded model and costs the size of the embedding again.
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
        """The final-norm hidden states (B, T, n_embd) of `idx` at `positions` (T,), after
        the cached ones."""
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
        c = self.config
        weight = self.transformer.wte.weight
        return KVCache(
            c.n_layer,
            batch_size,
            c.kv_heads,
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

        `exclude_embeddings` leaves out the lookups that cost no FLOPs: GPT-2's position
        table, and the token table when it is not tied to `lm_head` (tied, it is also the
        output projection's matmul).
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if self.config.arch == "gpt2":
                total -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.transformer.wte.weight.numel()
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
