"""`arch = "llama"` models as GGUF, checked with tools we did not write.

A llama model becomes llama.cpp's `llama` architecture, or `qwen3` when it was trained with
QK-norm (llama.cpp's `llama` graph has none; `qwen3` has, with split-half rotary, so each
head's query and key rows are reordered). gguf's `GGUFReader` reads keys and shapes back;
transformers loads the file as a LlamaForCausalLM or Qwen3ForCausalLM, whose logits on the
same tokens must match ours and whose greedy continuation must be ours. The weights are at
unit scale, so attention depends on positions and a query or key row in the wrong place
would change the logits by whole units, not by the 1e-4 allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
import tiktoken
import torch

from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import NORM_EPS, GPTConfig
from ml_playground.model.gpt import GPT
from tests.export_helpers import random_gpt, tiny_bpe_encoding
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
    unit_scale_gpt,
)

# vocab 601 pads to 640 rows: the 39 padding rows must not reach the file. A rope base
# other than the default shows that the file's freq_base is the one used.
TIED = GPTConfig(
    vocab_size=N_RANKS + 1,
    block_size=48,
    n_layer=2,
    n_head=2,
    n_embd=64,
    arch="llama",
    rope_base=500.0,
)
MODELS: dict[str, GPTConfig] = {
    "tied": TIED,
    "untied": TIED.replace(tie_embeddings=False, mlp_hidden=96),
    "grouped_query": TIED.replace(n_head=4, n_kv_head=2),
    "qk_norm": TIED.replace(qk_norm=True, n_head=4, n_kv_head=2),
    "qk_norm_untied_one_kv_head": TIED.replace(qk_norm=True, n_kv_head=1, tie_embeddings=False),
}


def model(name: str) -> GPT:
    return unit_scale_gpt(MODELS[name], seed=len(name))


def gguf_arch(config: GPTConfig) -> str:
    return "qwen3" if config.qk_norm else "llama"


def load_llama(path: Path, config: GPTConfig) -> torch.nn.Module:
    # transformers' GGUF reader maps no qwen3 key onto head_dim, and Qwen3Config defaults it
    # to 128 (llama.cpp reads attention.key_length, which the file states), so it is passed.
    return load_with_transformers(path, **({"head_dim": config.head_dim} if config.qk_norm else {}))


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    return tiny_bpe_encoding(N_RANKS)


@pytest.fixture(scope="module")
def prompt_ids(encoding: tiktoken.Encoding) -> list[int]:
    return encoding.encode_ordinary(PROMPT)


@pytest.fixture(scope="module")
def f32_files(
    tmp_path_factory: pytest.TempPathFactory, encoding: tiktoken.Encoding
) -> dict[str, Path]:
    return {
        name: export(tmp_path_factory.mktemp(name), model(name), encoding, "f32") for name in MODELS
    }


# --- what the file says ------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_metadata_holds_every_key_llama_cpp_requires(f32_files: dict[str, Path], name: str) -> None:
    config = MODELS[name]
    arch = gguf_arch(config)
    reader = gguf.GGUFReader(f32_files[name])

    expected = {
        "general.architecture": arch,
        f"{arch}.context_length": 48,
        f"{arch}.embedding_length": 64,
        f"{arch}.feed_forward_length": config.hidden_size,
        f"{arch}.block_count": 2,
        f"{arch}.attention.head_count": config.n_head,
        f"{arch}.attention.head_count_kv": config.kv_heads,
        f"{arch}.rope.dimension_count": config.head_dim,
        f"{arch}.vocab_size": N_RANKS + 1,
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
    }
    for key, value in expected.items():
        assert read_field(reader, key) == value, key
    assert read_field(reader, f"{arch}.rope.freq_base") == pytest.approx(500.0)
    assert read_field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(NORM_EPS)


def test_tokenizer_keys_are_the_gpt2_exports(
    tmp_path: Path, f32_files: dict[str, Path], encoding: tiktoken.Encoding
) -> None:
    gpt2 = random_gpt(TIED.replace(arch="gpt2"))
    gpt2_reader = gguf.GGUFReader(export(tmp_path, gpt2, encoding, "f32"))
    tokenizer_keys = [key for key in gpt2_reader.fields if key.startswith("tokenizer.")]
    assert "tokenizer.ggml.merges" in tokenizer_keys

    for path in f32_files.values():
        reader = gguf.GGUFReader(path)
        assert [key for key in reader.fields if key.startswith("tokenizer.")] == tokenizer_keys
        for key in tokenizer_keys:
            assert read_field(reader, key) == read_field(gpt2_reader, key), key


@pytest.mark.parametrize("name", MODELS)
def test_tensors_have_llama_cpp_names_and_shapes_without_padding_rows(
    f32_files: dict[str, Path], name: str
) -> None:
    config = MODELS[name]
    reader = gguf.GGUFReader(f32_files[name])

    d, head, vocab, ffn = 64, config.head_dim, N_RANKS + 1, config.hidden_size
    kv = config.kv_heads * head
    expected: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab, d),  # 601 rows, not the padded 640
        "output_norm.weight": (d,),
    }
    if not config.tie_embeddings:
        expected["output.weight"] = (vocab, d)
    for block in range(2):
        expected |= {
            f"blk.{block}.attn_norm.weight": (d,),
            f"blk.{block}.attn_q.weight": (d, d),
            f"blk.{block}.attn_k.weight": (kv, d),
            f"blk.{block}.attn_v.weight": (kv, d),
            f"blk.{block}.attn_output.weight": (d, d),
            f"blk.{block}.ffn_norm.weight": (d,),
            f"blk.{block}.ffn_gate.weight": (ffn, d),
            f"blk.{block}.ffn_up.weight": (ffn, d),
            f"blk.{block}.ffn_down.weight": (d, ffn),
        }
        if config.qk_norm:
            expected |= {f"blk.{block}.attn_q_norm.weight": (head,)}
            expected |= {f"blk.{block}.attn_k_norm.weight": (head,)}
    assert tensor_shapes(reader) == expected
    # Every name is one gguf's own table lists for the architecture.
    [kind] = [kind for kind, arch in gguf.MODEL_ARCH_NAMES.items() if arch == gguf_arch(config)]
    known = {
        f"{gguf.TENSOR_NAMES[tensor].format(bid=block)}.weight"
        for tensor in gguf.MODEL_TENSORS[kind]
        for block in range(2)
    }
    assert set(expected) <= known


def test_f16_and_q8_0_store_matrices_packed_and_vectors_in_f32(
    tmp_path: Path, encoding: tiktoken.Encoding
) -> None:
    ours = model("qk_norm")
    packed: list[tuple[NativeQuant, gguf.GGMLQuantizationType]] = [
        ("f16", gguf.GGMLQuantizationType.F16),
        ("q8_0", gguf.GGMLQuantizationType.Q8_0),
    ]
    for quant, matrix_type in packed:
        reader = gguf.GGUFReader(export(tmp_path / quant, ours, encoding, quant))
        kinds = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
        for matrix in ("token_embd", "blk.0.attn_q", "blk.0.attn_k", "blk.1.ffn_gate"):
            assert kinds[f"{matrix}.weight"] == matrix_type, matrix
        for vector in ("blk.0.attn_norm", "blk.0.attn_q_norm", "blk.1.ffn_norm", "output_norm"):
            assert kinds[f"{vector}.weight"] == gguf.GGMLQuantizationType.F32, vector


# --- what transformers computes from it ------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_transformers_logits_and_greedy_continuation_match_ours(
    f32_files: dict[str, Path], prompt_ids: list[int], name: str
) -> None:
    ours = model(name)
    theirs = load_llama(f32_files[name], MODELS[name])

    assert max_logit_difference(ours, theirs, prompt_ids) < 1e-4
    continuation = our_greedy(ours, prompt_ids)
    assert len(set(continuation)) > 3  # the next token depends on the context
    assert their_greedy(theirs, prompt_ids) == continuation


@pytest.mark.parametrize(("quant", "tolerance"), [("f16", 1e-2), ("q8_0", 0.25)])
def test_packed_files_load_in_transformers_close_to_ours(
    tmp_path: Path,
    encoding: tiktoken.Encoding,
    prompt_ids: list[int],
    quant: NativeQuant,
    tolerance: float,
) -> None:
    ours = model("qk_norm")
    theirs = load_llama(export(tmp_path, ours, encoding, quant), MODELS["qk_norm"])

    # Each weight is rounded to 11 (f16) or 8 (q8_0) significant bits; logits here are
    # several units large.
    assert max_logit_difference(ours, theirs, prompt_ids) < tolerance


def test_transformers_tokenizer_from_a_qwen3_file_splits_text_like_tiktoken(
    f32_files: dict[str, Path], encoding: tiktoken.Encoding
) -> None:
    assert_tokenizer_splits_like_tiktoken(f32_files["qk_norm"], encoding)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield
