"""The native GGUF writer, checked with tools we did not write.

gguf's own `GGUFReader` reads the file back (metadata keys llama.cpp's `gpt2` requires,
tensor names and shapes), and transformers loads it as a GPT2LMHeadModel and tokenizer:
its logits on the same tokens must match our model's, its greedy continuation must be
ours, and its tokenizer must split text exactly as tiktoken does. The vocabulary is GPT-2's
BPE cut to its first 600 ranks, which keeps each load to seconds; the full 50257-token
vocabulary goes through the same checks in tests/e2e/test_export_cli.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiktoken
import torch

from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import NORM_EPS, GPTConfig
from ml_playground.model.gpt import GPT
from tests.export_helpers import EOT, random_gpt, tiny_bpe_encoding
from tests.gguf_helpers import (
    N_RANKS,
    PROMPT,
    assert_tokenizer_splits_like_tiktoken,
    export,
    load_with_transformers,
    max_logit_difference,
    one_torch_thread,
    our_greedy,
    read_field,
    tensor_shapes,
    their_greedy,
)

TOLERANCE: dict[NativeQuant, float] = {"f32": 1e-4, "f16": 1e-2}


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    return tiny_bpe_encoding(N_RANKS)


def model_for(bias: bool, **shape: int | bool) -> GPT:
    # vocab 601 pads to 640 rows: the 39 padding rows must not reach the file.
    config = GPTConfig(
        vocab_size=N_RANKS + 1, block_size=48, n_layer=2, n_head=2, n_embd=64, bias=bias
    ).replace(**shape)
    return random_gpt(config, seed=int(bias))


def load_gpt2(path: Path, inner: int = 256) -> torch.nn.Module:
    # transformers maps gpt2.context_length onto `n_ctx` and feed_forward_length onto a key
    # of the same name, neither of which GPT2Config reads (it reads n_positions, default
    # 1024, and n_inner, default 4 * n_embd), so both have to be passed; the tests of the
    # metadata check that the file states them.
    return load_with_transformers(path, n_positions=48, n_inner=inner)


# --- what the file says ------------------------------------------------------------------


@pytest.fixture(scope="module")
def f32_no_bias(tmp_path_factory: pytest.TempPathFactory, encoding: tiktoken.Encoding) -> Path:
    return export(tmp_path_factory.mktemp("f32"), model_for(bias=False), encoding, "f32")


def test_metadata_holds_every_key_llama_cpp_requires(f32_no_bias: Path) -> None:
    reader = gguf.GGUFReader(f32_no_bias)

    expected = {
        "general.architecture": "gpt2",
        "gpt2.context_length": 48,
        "gpt2.embedding_length": 64,
        "gpt2.feed_forward_length": 256,
        "gpt2.block_count": 2,
        "gpt2.attention.head_count": 2,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": N_RANKS,
        "tokenizer.ggml.eos_token_id": N_RANKS,
        "tokenizer.ggml.add_bos_token": False,
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
    }
    for key, value in expected.items():
        assert read_field(reader, key) == value, key
    assert read_field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(NORM_EPS)
    tokens = read_field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == N_RANKS + 1
    assert tokens[N_RANKS] == EOT
    assert tokens[220] == "Ġ"  # the space byte in GPT-2's printable alphabet
    types = read_field(reader, "tokenizer.ggml.token_type")
    assert types[N_RANKS] == gguf.TokenType.CONTROL
    assert set(types[:N_RANKS]) == {gguf.TokenType.NORMAL}
    merges = read_field(reader, "tokenizer.ggml.merges")
    assert len(merges) == N_RANKS - 256  # every token above the 256 bytes is one merge
    assert merges[:3] == ["Ġ t", "Ġ a", "h e"]  # GPT-2's merges.txt starts the same way


def test_tensors_have_llama_cpp_names_and_shapes_without_padding_rows(f32_no_bias: Path) -> None:
    reader = gguf.GGUFReader(f32_no_bias)
    shapes = tensor_shapes(reader)

    d, vocab, ctx = 64, N_RANKS + 1, 48
    expected: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab, d),  # 601 rows, not the padded 640
        "position_embd.weight": (ctx, d),
        "output_norm.weight": (d,),
        "output_norm.bias": (d,),
    }
    for block in range(2):
        expected |= {
            f"blk.{block}.attn_norm.weight": (d,),
            f"blk.{block}.attn_norm.bias": (d,),
            f"blk.{block}.attn_qkv.weight": (3 * d, d),
            f"blk.{block}.attn_qkv.bias": (3 * d,),
            f"blk.{block}.attn_output.weight": (d, d),
            f"blk.{block}.attn_output.bias": (d,),
            f"blk.{block}.ffn_norm.weight": (d,),
            f"blk.{block}.ffn_norm.bias": (d,),
            f"blk.{block}.ffn_up.weight": (4 * d, d),
            f"blk.{block}.ffn_up.bias": (4 * d,),
            f"blk.{block}.ffn_down.weight": (d, 4 * d),
            f"blk.{block}.ffn_down.bias": (d,),
        }
    assert shapes == expected  # no `output`: llama.cpp reuses token_embd, as the model does
    assert all(tensor.tensor_type == gguf.GGMLQuantizationType.F32 for tensor in reader.tensors)


def test_a_model_without_biases_gets_zero_biases(f32_no_bias: Path) -> None:
    reader = gguf.GGUFReader(f32_no_bias)

    biases = [tensor for tensor in reader.tensors if tensor.name.endswith(".bias")]

    assert len(biases) == 2 * 6 + 1
    assert all(not np.any(tensor.data) for tensor in biases)


def test_f16_and_q8_0_store_matrices_packed_and_vectors_in_f32(
    tmp_path: Path, encoding: tiktoken.Encoding
) -> None:
    model = model_for(bias=True)
    packed: list[tuple[NativeQuant, gguf.GGMLQuantizationType]] = [
        ("f16", gguf.GGMLQuantizationType.F16),
        ("q8_0", gguf.GGMLQuantizationType.Q8_0),
    ]
    for quant, matrix_type in packed:
        reader = gguf.GGUFReader(export(tmp_path / quant, model, encoding, quant))
        kinds = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
        assert kinds["blk.0.attn_qkv.weight"] == matrix_type
        assert kinds["token_embd.weight"] == matrix_type
        assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
        assert kinds["blk.0.ffn_up.bias"] == gguf.GGMLQuantizationType.F32


# --- what transformers computes from it ------------------------------------------------


@pytest.fixture(scope="module")
def prompt_ids(encoding: tiktoken.Encoding) -> list[int]:
    return encoding.encode_ordinary(PROMPT)


@pytest.mark.parametrize(("quant", "bias"), [("f32", False), ("f32", True), ("f16", True)])
def test_transformers_logits_and_greedy_continuation_match_ours(
    tmp_path: Path,
    encoding: tiktoken.Encoding,
    prompt_ids: list[int],
    quant: NativeQuant,
    bias: bool,
) -> None:
    ours = model_for(bias)
    theirs = load_gpt2(export(tmp_path, ours, encoding, quant))

    assert max_logit_difference(ours, theirs, prompt_ids) < TOLERANCE[quant]
    assert their_greedy(theirs, prompt_ids) == our_greedy(ours, prompt_ids)


def test_an_untied_head_is_written_as_output_and_transformers_uses_it(
    tmp_path: Path, encoding: tiktoken.Encoding, prompt_ids: list[int]
) -> None:
    ours = model_for(bias=True, tie_embeddings=False, mlp_hidden=96)
    path = export(tmp_path, ours, encoding, "f32")
    reader = gguf.GGUFReader(path)

    assert tensor_shapes(reader)["output.weight"] == (N_RANKS + 1, 64)  # padding rows cut
    assert tensor_shapes(reader)["blk.0.ffn_up.weight"] == (96, 64)
    assert read_field(reader, "gpt2.feed_forward_length") == 96
    theirs = load_gpt2(path, inner=96)
    assert max_logit_difference(ours, theirs, prompt_ids) < TOLERANCE["f32"]
    assert their_greedy(theirs, prompt_ids) == our_greedy(ours, prompt_ids)


def test_q8_0_loads_in_transformers_close_to_ours(
    tmp_path: Path, encoding: tiktoken.Encoding, prompt_ids: list[int]
) -> None:
    ours = model_for(bias=True)
    theirs = load_gpt2(export(tmp_path, ours, encoding, "q8_0"))

    # 8-bit blocks: each weight is off by up to half a step of its block's scale.
    assert max_logit_difference(ours, theirs, prompt_ids) < 5e-2


def test_transformers_tokenizer_from_the_file_splits_text_like_tiktoken(
    f32_no_bias: Path, encoding: tiktoken.Encoding
) -> None:
    assert_tokenizer_splits_like_tiktoken(f32_no_bias, encoding)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield
