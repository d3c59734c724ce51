"""A tiny Llama that llama.cpp's real converter takes, and llama.cpp's tools run on exports.

The converters are the ones `make llama-cpp-converters` puts into tools/llama_cpp/ (CI runs
it); the binaries (llama-quantize, llama-completion) are the ones `make llama-cpp` builds
into tools/llama_cpp/bin/. The model is a Llama on GPT-2's byte-level BPE, whose
pre-tokenizer the converter recognises. Everything is written under a folder the caller
passes in (a tmp_path), never into the source tree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import cast

import pytest
import torch

from tests.cli_helpers import run_cli
from tests.conftest import REPO_ROOT
from tests.export_helpers import EOT, gpt2_encoding

TOOLS = REPO_ROOT / "tools" / "llama_cpp"
N_HEAD, N_KV_HEAD = 4, 2


def require_converters() -> None:
    """Fail, naming the make target, unless llama.cpp's converters are fetched."""
    missing = [
        name
        for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
        if not (TOOLS / name).is_file()
    ]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing in {TOOLS}: run `make llama-cpp-converters`")


def build_gpt2_llama(folder: Path) -> Path:
    """A tiny Llama with GPT-2's tokenizer (from tiktoken's r50k_base ranks), saved into
    `folder` like a hub download; returns it. A Llama, not a Qwen2: transformers 5 always
    gives a qwen2 model its own Qwen2Tokenizer, whose pre-tokenizer is not GPT-2's; a llama
    model keeps tokenizer.json's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415 - heavy
    from transformers import (  # noqa: PLC0415 - heavy
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    from ml_playground.export.bpe_vocab import gpt2_vocab  # noqa: PLC0415 - imports tiktoken

    vocab = gpt2_vocab("r50k_base", gpt2_encoding())
    merges = [cast(tuple[str, str], tuple(merge.split(" "))) for merge in vocab.merges]
    bpe = Tokenizer(
        models.BPE(vocab={token: i for i, token in enumerate(vocab.tokens)}, merges=merges)
    )
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # pyright: ignore[reportAttributeAccessIssue] - the stubs lack the setter
    bpe.decoder = decoders.ByteLevel()  # pyright: ignore[reportAttributeAccessIssue] - as above
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT, bos_token=EOT)  # type: ignore[no-untyped-call]  # untyped library
    tokenizer.save_pretrained(str(folder))  # pyright: ignore[reportUnknownMemberType] - untyped library
    config = LlamaConfig(
        vocab_size=len(vocab.tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=vocab.eos_id,
        eos_token_id=vocab.eos_id,
    )
    torch.default_generator.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # unit-scale weights: attention then depends on what goes in
        for param in model.parameters():
            param.normal_(0.0, 1.0 if param.ndim == 1 else 0.3)
    model.save_pretrained(str(folder))  # pyright: ignore[reportUnknownMemberType] - untyped library
    return folder


def export_cli(cwd: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """`ml-playground export folder` in a subprocess, which must succeed."""
    result = run_cli(cwd, "export", folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def llama_binaries() -> list[Path]:
    return [TOOLS / "bin" / name for name in ("llama-quantize", "llama-completion")]


def llama_completion(gguf_file: Path, prompt: str, steps: int) -> str:
    """llama.cpp's greedy continuation of `prompt`, on one thread, without the prompt."""
    model = ["-m", str(gguf_file), "-p", prompt, "-n", str(steps)]
    greedy = ["--temp", "0", "-no-cnv", "--no-warmup", "--no-display-prompt", "-t", "1"]
    result = subprocess.run(
        [str(TOOLS / "bin" / "llama-completion"), *model, *greedy],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.rstrip("\n")  # it ends its output with blank lines of its own
