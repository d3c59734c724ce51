"""Write a from-scratch GPT as a GGUF file llama.cpp runs without conversion.

Which llama.cpp architecture holds it follows from the model's own `arch` (`arch_for`):
`gpt2` for GPT-2, `llama` for the llama block, `qwen3` for a llama block with QK-norm.
Everything else is the same for all of them and written here: the keys every architecture
shares, GPT-2's byte-level BPE tokenizer, and how each tensor is stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
import torch

from ml_playground import atomic
from ml_playground.export.bpe_vocab import ByteLevelVocab
from ml_playground.export.gguf_arch import GGUFArch, GGUFTensor
from ml_playground.export.gguf_gpt2 import GPT2
from ml_playground.export.gguf_llama import LLAMA, QWEN3
from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import GPTConfig

FILE_TYPES: Mapping[NativeQuant, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


def arch_for(config: GPTConfig) -> GGUFArch:
    """The llama.cpp architecture whose graph computes exactly what this model does."""
    if config.arch == "gpt2":
        return GPT2
    return QWEN3 if config.qk_norm else LLAMA


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
    arch = arch_for(config)
    writer = gguf.GGUFWriter(path, arch.name)
    # gguf writes with numpy, whose short write on a full disk names no file.
    with atomic.naming(path), contextlib.closing(writer):
        _add_metadata(writer, config, n_tokens, quant, model_name)
        arch.hyperparameters(writer, config)
        _add_tokenizer(writer, vocab)
        for tensor in arch.tensors(state, config, n_tokens):
            _add_tensor(writer, tensor, storage_type(tensor, quant))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()


def _add_metadata(
    writer: gguf.GGUFWriter, config: GPTConfig, n_tokens: int, quant: NativeQuant, model_name: str
) -> None:
    writer.add_name(model_name)
    writer.add_file_type(FILE_TYPES[quant])
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.hidden_size)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
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
