"""Write a from-scratch GPT as a GGUF file of llama.cpp's `gpt2` architecture.

Our GPT is GPT-2's architecture with `nn.Linear` layers, so every tensor maps one to one
onto a llama.cpp `gpt2` tensor. llama.cpp stores a matrix with ggml's dimension order
{in, out}, which in numpy's row-major order is (out, in): exactly `nn.Linear.weight`, so
nothing is transposed (Hugging Face's GPT-2 uses Conv1D, (in, out), which its converter
transposes). Three differences from our checkpoints are bridged here:

- llama.cpp's `gpt2` graph requires every bias; a model trained with `bias = false` gets
  zero biases, which compute exactly what no bias computes.
- The embedding is padded to a multiple of 64 rows for speed; the extra rows are no tokens,
  so they are dropped (kept, llama.cpp would sample them: it cannot mask them as we do).
- `lm_head` is tied to the token embedding; llama.cpp reuses `token_embd` when there is no
  `output` tensor, so it is not written twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import torch

from ml_playground.export.bpe_vocab import ByteLevelVocab
from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import NORM_EPS, GPTConfig

ARCH = "gpt2"

FILE_TYPES: Mapping[NativeQuant, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as GGUF will hold it: its name and float32 values in numpy layout."""

    name: str
    values: Float32Array


def tensor_name(kind: gguf.MODEL_TENSOR, suffix: str, block: int | None = None) -> str:
    """llama.cpp's name for a tensor, e.g. `blk.0.attn_qkv.weight`, from gguf's own table."""
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=block) if block is not None else base}.{suffix}"


# Our parameter (after `transformer.h.N.`) -> llama.cpp tensor, for each block.
BLOCK_TENSORS: Mapping[str, gguf.MODEL_TENSOR] = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": gguf.MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}


def gguf_tensors(
    state: Mapping[str, torch.Tensor], config: GPTConfig, n_tokens: int
) -> Iterator[GGUFTensor]:
    """Every tensor llama.cpp's `gpt2` loads, in float32, from a GPT state dict.

    Only the first `n_tokens` embedding rows are tokens; the rest is padding.
    """

    def values(name: str) -> Float32Array:
        array: Float32Array = state[name].detach().to(torch.float32).cpu().numpy()
        return array

    def bias_or_zeros(module: str, width: int) -> Float32Array:
        key = f"{module}.bias"
        return values(key) if key in state else np.zeros(width, dtype=np.float32)

    def layer(
        kind: gguf.MODEL_TENSOR, module: str, width: int, block: int | None
    ) -> list[GGUFTensor]:
        return [
            GGUFTensor(tensor_name(kind, "weight", block), values(f"{module}.weight")),
            GGUFTensor(tensor_name(kind, "bias", block), bias_or_zeros(module, width)),
        ]

    d = config.n_embd
    embedding = values("transformer.wte.weight")[:n_tokens]
    yield GGUFTensor(tensor_name(gguf.MODEL_TENSOR.TOKEN_EMBD, "weight"), embedding)
    yield GGUFTensor(
        tensor_name(gguf.MODEL_TENSOR.POS_EMBD, "weight"), values("transformer.wpe.weight")
    )
    for block in range(config.n_layer):
        for ours, kind in BLOCK_TENSORS.items():
            module = f"transformer.h.{block}.{ours}"
            width = state[f"{module}.weight"].shape[0]
            yield from layer(kind, module, width, block)
    yield from layer(gguf.MODEL_TENSOR.OUTPUT_NORM, "transformer.ln_f", d, None)


def storage_type(tensor: GGUFTensor, quant: NativeQuant) -> gguf.GGMLQuantizationType:
    """How a tensor is stored: vectors (norms, biases) always in f32, as llama.cpp does.

    q8_0 packs rows in blocks of 32 values; a matrix whose rows do not divide into blocks
    falls back to f16, as llama.cpp's own converter does.
    """
    if quant == "f32" or tensor.values.ndim < 2:
        return gguf.GGMLQuantizationType.F32
    if quant == "q8_0":
        block_size, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
        if tensor.values.shape[-1] % block_size == 0:
            return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def write_gpt_gguf(
    path: Path,
    state: Mapping[str, torch.Tensor],
    config: GPTConfig,
    vocab: ByteLevelVocab,
    *,
    quant: NativeQuant,
    model_name: str,
) -> None:
    """Write the model and its tokenizer to `path` (the caller makes this atomic)."""
    n_tokens = len(vocab.tokens)
    if n_tokens > config.vocab_size:
        raise ValueError(f"tokenizer has {n_tokens} tokens but the model only {config.vocab_size}")
    writer = gguf.GGUFWriter(path, ARCH)
    try:
        _add_metadata(writer, config, n_tokens, quant, model_name)
        _add_tokenizer(writer, vocab)
        for tensor in gguf_tensors(state, config, n_tokens):
            _add_tensor(writer, tensor, storage_type(tensor, quant))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_metadata(
    writer: gguf.GGUFWriter, config: GPTConfig, n_tokens: int, quant: NativeQuant, model_name: str
) -> None:
    writer.add_name(model_name)
    writer.add_file_type(FILE_TYPES[quant])
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(NORM_EPS)
    writer.add_vocab_size(n_tokens)


def _add_tokenizer(writer: gguf.GGUFWriter, vocab: ByteLevelVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    # GPT-2 has one special token; it both separates documents and ends generation.
    writer.add_bos_token_id(vocab.eos_id)
    writer.add_eos_token_id(vocab.eos_id)
    # Training never prefixed a document with it, so neither may llama.cpp.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def _add_tensor(
    writer: gguf.GGUFWriter, tensor: GGUFTensor, kind: gguf.GGMLQuantizationType
) -> None:
    if kind == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(tensor.name, tensor.values)
    elif kind == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(tensor.name, tensor.values.astype(np.float16))
    else:
        packed = gguf.quantize(tensor.values, kind)
        writer.add_tensor(tensor.name, packed, raw_dtype=kind)
