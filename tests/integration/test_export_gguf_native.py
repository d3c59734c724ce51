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
from typing import Any, Protocol, cast

import gguf
import numpy as np
import pytest
import tiktoken
import torch

from ml_playground.config import SampleSettings
from ml_playground.export.bpe_vocab import ByteLevelVocab, build_vocab
from ml_playground.export.gguf_gpt import write_gpt_gguf
from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import NORM_EPS, GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.sample.generate import generate
from ml_playground.sample.gpt import gpt_step
from tests.export_helpers import EOT, random_gpt, tiny_bpe_encoding

N_RANKS = 600
PROMPT = "ROMEO: But soft, what light through yonder window breaks?"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:  Speak, speak!  2024"
GREEDY_TOKENS = 12
TOLERANCE: dict[NativeQuant, float] = {"f32": 1e-4, "f16": 1e-2}


def tiny_vocab(encoding: tiktoken.Encoding) -> ByteLevelVocab:
    ranks = {encoding.decode_single_token_bytes(rank): rank for rank in range(N_RANKS)}
    return build_vocab(ranks, {N_RANKS: EOT}, eos_id=N_RANKS)


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    return tiny_bpe_encoding(N_RANKS)


def model_for(bias: bool) -> GPT:
    # vocab 601 pads to 640 rows: the 39 padding rows must not reach the file.
    config = GPTConfig(
        vocab_size=N_RANKS + 1, block_size=48, n_layer=2, n_head=2, n_embd=64, bias=bias
    )
    return random_gpt(config, seed=int(bias))


def export(folder: Path, model: GPT, encoding: tiktoken.Encoding, quant: NativeQuant) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.gguf"
    write_gpt_gguf(
        path, model.state_dict(), model.config, tiny_vocab(encoding), quant=quant, model_name="t"
    )
    return path


class TextTokenizer(Protocol):
    """The part of a transformers tokenizer these tests use."""

    eos_token: str

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def load_with_transformers(path: Path, block_size: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - slow import, these tests only

    # transformers maps gpt2.context_length onto `n_ctx`, a name GPT2Config no longer reads
    # (it reads n_positions, default 1024), so a context other than 1024 has to be passed;
    # test_metadata_holds_every_key_llama_cpp_requires checks the file states it.
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
        str(path.parent), gguf_file=path.name, dtype=torch.float32, n_positions=block_size
    )
    return model.eval()


def transformers_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        output = model(torch.tensor([ids]))
    return cast(torch.Tensor, output.logits)[0]


def our_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(torch.tensor([ids]))
    return logits[0, :, : model.config.vocab_size]


def greedy(model: torch.nn.Module, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding with transformers' model, the whole context each step."""
    context = list(ids)
    for _ in range(steps):
        context.append(int(transformers_logits(model, context)[-1].argmax()))
    return context[len(ids) :]


def read_field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"{key} missing"
    return field.contents()


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
    shapes = {tensor.name: tuple(int(n) for n in tensor.data.shape) for tensor in reader.tensors}

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
    theirs = load_with_transformers(export(tmp_path, ours, encoding, quant), block_size=48)

    difference = (our_logits(ours, prompt_ids) - transformers_logits(theirs, prompt_ids)).abs()
    print(f"{quant} bias={bias}: max |logit difference| = {difference.max().item():.3g}")
    assert difference.max().item() < TOLERANCE[quant]

    greedy_settings = SampleSettings(temperature=0.0, max_new_tokens=GREEDY_TOKENS)
    [ours_greedy] = generate(gpt_step(ours), prompt_ids, greedy_settings)
    assert greedy(theirs, prompt_ids, GREEDY_TOKENS) == ours_greedy.ids


def test_q8_0_loads_in_transformers_close_to_ours(
    tmp_path: Path, encoding: tiktoken.Encoding, prompt_ids: list[int]
) -> None:
    ours = model_for(bias=True)
    theirs = load_with_transformers(export(tmp_path, ours, encoding, "q8_0"), block_size=48)

    difference = (our_logits(ours, prompt_ids) - transformers_logits(theirs, prompt_ids)).abs()
    print(f"q8_0: max |logit difference| = {difference.max().item():.3g}")
    # 8-bit blocks: each weight is off by up to half a step of its block's scale.
    assert difference.max().item() < 5e-2


def test_transformers_tokenizer_from_the_file_splits_text_like_tiktoken(
    f32_no_bias: Path, encoding: tiktoken.Encoding
) -> None:
    from transformers import AutoTokenizer  # noqa: PLC0415 - slow import, these tests only

    tokenizer = cast(
        TextTokenizer,
        AutoTokenizer.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
            str(f32_no_bias.parent), gguf_file=f32_no_bias.name
        ),
    )

    for text in (TEXT, PROMPT, "naïve café, ünïcödé: 😀 and\ttabs\r\n"):
        assert tokenizer.encode(text, add_special_tokens=False) == encoding.encode_ordinary(text)
    ids = encoding.encode_ordinary(TEXT)
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.eos_token == EOT


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny matmuls are fastest and bit-stable on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
