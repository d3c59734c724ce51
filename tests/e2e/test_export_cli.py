"""`ml-playground export` as a user runs it, on GPTs with GPT-2's full BPE vocabulary.

The exported file is judged by tools we did not write: gguf's GGUFReader reads its keys
and shapes back, and transformers loads it and must compute our model's logits and greedy
continuation. Errors are one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import pytest
import torch

from ml_playground.checkpoint import seal_adapters
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from tests.cli_helpers import assert_one_error_line, run_cli
from tests.experiments import export_config, lora_run
from tests.export_helpers import gpt2_encoding, random_gpt, save_checkpoint
from tests.gguf_helpers import (
    PROMPT,
    load_with_transformers,
    max_logit_difference,
    our_greedy,
    read_field,
    tensor_shapes,
    their_greedy,
)

SMALL = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=64)
GPT2 = TokenizerSpec(kind="tiktoken", encoding="gpt2")


cli = run_cli


def assert_transformers_runs_like(model: GPT, theirs: torch.nn.Module) -> None:
    """transformers' model from the file computes our logits (f16) and greedy continuation."""
    ids = gpt2_encoding().encode_ordinary(PROMPT)
    assert max_logit_difference(model, theirs, ids) < 1e-2
    assert their_greedy(theirs, ids, steps=8) == our_greedy(model, ids, steps=8)


def trained(folder: Path, model: GPT, spec: TokenizerSpec = GPT2, **export: str | bool) -> Path:
    export_config(folder, {"enabled": True, "quant": "f16", **export})
    save_checkpoint(folder / "out", model, spec)
    return folder


def exported(tmp_path: Path, model: GPT, experiment: str) -> Path:
    """`ml-playground export` of `model`'s checkpoint, succeeded; the bundle's folder."""
    folder = trained(tmp_path / experiment, model)

    result = cli(tmp_path, "export", folder)

    assert result.returncode == 0, result.stderr
    export_dir = folder / "export"
    for name in ("model.gguf", "Modelfile", "README.md", "SHA256SUMS"):
        assert (export_dir / name).is_file()
    assert f"exported {export_dir / 'model.gguf'}" in result.stdout
    return export_dir


def test_export_writes_a_gguf_transformers_runs_like_our_model(tmp_path: Path) -> None:
    model = random_gpt(SMALL)
    export_dir = exported(tmp_path, model, "shakespeare")

    gguf_path = export_dir / "model.gguf"
    reader = gguf.GGUFReader(gguf_path)
    assert len(read_field(reader, "tokenizer.ggml.tokens")) == 50257
    assert len(read_field(reader, "tokenizer.ggml.merges")) == 50000
    shapes = tensor_shapes(reader)
    assert shapes["token_embd.weight"] == (50257, 64)  # the model's 50304 padded rows, cut
    assert shapes["position_embd.weight"] == (64, 64)
    # n_positions: transformers maps gpt2.context_length to `n_ctx`, which GPT2Config ignores.
    assert_transformers_runs_like(model, load_with_transformers(gguf_path, n_positions=64))

    again = cli(tmp_path, "convert", export_dir.parent)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def test_export_of_a_llama_model_writes_llama_cpps_llama_architecture(tmp_path: Path) -> None:
    model = random_gpt(SMALL.replace(arch="llama", n_kv_head=1, tie_embeddings=False))
    export_dir = exported(tmp_path, model, "llama")

    gguf_path = export_dir / "model.gguf"
    reader = gguf.GGUFReader(gguf_path)
    assert read_field(reader, "general.architecture") == "llama"
    assert read_field(reader, "llama.attention.head_count_kv") == 1
    shapes = tensor_shapes(reader)
    assert shapes["token_embd.weight"] == shapes["output.weight"] == (50257, 64)
    readme = (export_dir / "README.md").read_text(encoding="utf-8")
    assert "llama.cpp architecture llama, f16" in readme
    assert_transformers_runs_like(model, load_with_transformers(gguf_path))


def test_export_disabled_is_one_error_line(tmp_path: Path) -> None:
    folder = trained(tmp_path / "exp", random_gpt(SMALL), enabled=False)

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "enabled = true" in line
    assert not (folder / "export").exists()


def test_export_without_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    export_config(folder, {"enabled": True})

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "no checkpoint" in line
    assert not (folder / "export").exists()


def test_export_of_a_character_level_model_is_one_error_line(tmp_path: Path) -> None:
    chars = TokenizerSpec(kind="char", vocab=tuple(" abcdefgh"))
    tiny = GPTConfig(vocab_size=9, block_size=8, n_layer=1, n_head=1, n_embd=8)
    folder = trained(tmp_path / "exp", random_gpt(tiny), spec=chars)

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "character-level" in line
    assert not (folder / "export").exists()


def test_export_of_a_fine_tuned_model_with_a_missing_convert_bin_is_one_error_line(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "speakger"
    adapters = folder / "out" / "adapters" / "best"
    adapters.mkdir(parents=True)
    (adapters / "adapter_config.json").write_text("{}", encoding="utf-8")
    seal_adapters(adapters)
    (folder / "out" / "tokenizer").mkdir()
    (tmp_path / "base").mkdir()
    convert_bin = str(tmp_path / "llama.cpp" / "convert_hf_to_gguf.py")
    lora_run(
        folder, tmp_path / "base", {"export.ollama": {"enabled": True, "convert_bin": convert_bin}}
    )

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "convert_bin = " in line
    assert "llama.cpp/convert_hf_to_gguf.py' is neither a file nor a command on PATH" in line
    assert not (folder / "export").exists()


@pytest.fixture(autouse=True)
def _offline() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
