"""`arch = "llama"` as llama.cpp's `llama` architecture, or `qwen3` when it has QK-norm.

Every parameter of a `LlamaBlock` maps one to one onto a llama.cpp tensor. What differs
between the two targets is how each head's query and key rows are ordered:

- `llama` rotates adjacent pairs (x0, x1), (x2, x3), ... (llama.cpp's "normal" rope), as
  our model does (`model/gpt.py`), so the weights go in as they are.
- llama.cpp's `llama` graph has no QK-norm; `qwen3` is the same graph with `attn_q_norm`
  and `attn_k_norm`, but rotates split halves (x_i, x_{i + head_dim/2}) ("neox" rope).
  Pair i turns by the same angle in both layouts, so moving row 2i of each head to i and
  row 2i+1 to i + head_dim/2 (and the QK-norm weights with them: the norm is taken over a
  head's values, so it commutes with reordering them) computes exactly the same attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial

import gguf

from ml_playground.export.gguf_arch import (
    Float32Array,
    GGUFArch,
    GGUFTensor,
    StateDict,
    float32,
    tensor_name,
    vocabulary_tensors,
)
from ml_playground.model.config import NORM_EPS, GPTConfig

# Our parameter (after `transformer.h.N.`) -> llama.cpp tensor, for each block; the QK-norm
# weights exist only in models trained with qk_norm.
BLOCK_TENSORS: Mapping[str, gguf.MODEL_TENSOR] = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_q": gguf.MODEL_TENSOR.ATTN_Q,
    "attn.c_k": gguf.MODEL_TENSOR.ATTN_K,
    "attn.c_v": gguf.MODEL_TENSOR.ATTN_V,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "attn.q_norm": gguf.MODEL_TENSOR.ATTN_Q_NORM,
    "attn.k_norm": gguf.MODEL_TENSOR.ATTN_K_NORM,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.gate": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}

# A tensor's rows in a given rope layout, from our adjacent-pair rows and its head count.
RopeLayout = Callable[[Float32Array, int], Float32Array]


def adjacent_pairs(values: Float32Array, heads: int) -> Float32Array:
    """Our own layout, which llama.cpp's `llama` reads."""
    return values


def split_halves(values: Float32Array, heads: int) -> Float32Array:
    """Each head's rows 0, 2, 4, ... first, then 1, 3, 5, ...: `qwen3`'s layout."""
    half = values.shape[0] // heads // 2
    by_pair = values.reshape(heads, half, 2, *values.shape[1:])
    return by_pair.swapaxes(1, 2).reshape(values.shape)


def rotated_heads(config: GPTConfig) -> Mapping[str, int]:
    """The parameters whose rows rotary embedding pairs up, with their number of heads."""
    return {
        "attn.c_q": config.n_head,
        "attn.c_k": config.kv_heads,
        "attn.q_norm": 1,
        "attn.k_norm": 1,
    }


def llama_tensors(
    state: StateDict, config: GPTConfig, n_tokens: int, *, layout: RopeLayout
) -> Iterator[GGUFTensor]:
    """Every tensor of a llama-architecture state dict, queries and keys in `layout`."""
    rotated = rotated_heads(config)
    yield from vocabulary_tensors(state, config, n_tokens)
    for block in range(config.n_layer):
        for ours, kind in BLOCK_TENSORS.items():
            key = f"transformer.h.{block}.{ours}.weight"
            if key not in state:
                continue
            values = float32(state, key)
            if ours in rotated:
                values = layout(values, rotated[ours])
            yield GGUFTensor(tensor_name(kind, "weight", block), values)
    yield GGUFTensor(
        tensor_name(gguf.MODEL_TENSOR.OUTPUT_NORM, "weight"),
        float32(state, "transformer.ln_f.weight"),
    )


def llama_hyperparameters(writer: gguf.GGUFWriter, config: GPTConfig) -> None:
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_base)
    writer.add_layer_norm_rms_eps(NORM_EPS)


def qwen3_hyperparameters(writer: gguf.GGUFWriter, config: GPTConfig) -> None:
    llama_hyperparameters(writer, config)
    # Qwen3 models set head_dim apart from n_embd / n_head; ours never do, but say so.
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)


LLAMA = GGUFArch(
    gguf.MODEL_ARCH.LLAMA, partial(llama_tensors, layout=adjacent_pairs), llama_hyperparameters
)
QWEN3 = GGUFArch(
    gguf.MODEL_ARCH.QWEN3, partial(llama_tensors, layout=split_halves), qwen3_hyperparameters
)
