"""`arch = "gpt2"` as llama.cpp's `gpt2` architecture.

Our GPT-2 block uses `nn.Linear` layers, so every tensor maps one to one onto a llama.cpp
`gpt2` tensor (Hugging Face's GPT-2 uses Conv1D, (in, out), which its converter
transposes). llama.cpp's `gpt2` graph requires every bias; a model trained with
`bias = false` gets zero biases, which compute exactly what no bias computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import gguf
import numpy as np

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

# Our parameter (after `transformer.h.N.`) -> llama.cpp tensor, for each block.
BLOCK_TENSORS: Mapping[str, gguf.MODEL_TENSOR] = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": gguf.MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}


def gpt2_tensors(state: StateDict, config: GPTConfig, n_tokens: int) -> Iterator[GGUFTensor]:
    """Every tensor llama.cpp's `gpt2` loads, from a GPT-2 state dict."""

    def bias_or_zeros(module: str, width: int) -> Float32Array:
        key = f"{module}.bias"
        return float32(state, key) if key in state else np.zeros(width, dtype=np.float32)

    def layer(
        kind: gguf.MODEL_TENSOR, module: str, width: int, block: int | None
    ) -> list[GGUFTensor]:
        return [
            GGUFTensor(tensor_name(kind, "weight", block), float32(state, f"{module}.weight")),
            GGUFTensor(tensor_name(kind, "bias", block), bias_or_zeros(module, width)),
        ]

    yield from vocabulary_tensors(state, config, n_tokens)
    yield GGUFTensor(
        tensor_name(gguf.MODEL_TENSOR.POS_EMBD, "weight"), float32(state, "transformer.wpe.weight")
    )
    for block in range(config.n_layer):
        for ours, kind in BLOCK_TENSORS.items():
            module = f"transformer.h.{block}.{ours}"
            width = state[f"{module}.weight"].shape[0]
            yield from layer(kind, module, width, block)
    yield from layer(gguf.MODEL_TENSOR.OUTPUT_NORM, "transformer.ln_f", config.n_embd, None)


def gpt2_hyperparameters(writer: gguf.GGUFWriter, config: GPTConfig) -> None:
    writer.add_layer_norm_eps(NORM_EPS)


GPT2 = GGUFArch(gguf.MODEL_ARCH.GPT2, gpt2_tensors, gpt2_hyperparameters)
