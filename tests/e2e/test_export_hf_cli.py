"""`ml-playground export` to a Hugging Face folder (`[export.hf]`), judged by transformers.

transformers loads the folder with its stock classes (trust_remote_code off) and must
compute our model's logits within 1e-4 in float32 and its greedy continuation token for
token; its tokenizer must encode text to exactly our ids; loading and saving the folder
again must change nothing. Errors are one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
import torch

from ml_playground.data.tokenizer import TokenizerSpec, tokenizer_from_spec
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from tests.cli_helpers import assert_one_error_line, run_cli, sha256_of_files
from tests.experiments import SAVED_GPT_RUN, lora_run, saved_gpt, shakespeare_text
from tests.gguf_helpers import (
    PROMPT,
    max_logit_difference,
    our_greedy,
    their_greedy,
    unit_scale_gpt,
)
from tests.toml_helpers import Settings, write_toml

GPT2 = TokenizerSpec(kind="tiktoken", encoding="gpt2")
# ASCII, umlauts, emoji, runs of newlines and spaces: what a byte-level BPE must split alike.
TEXT = "ROMEO: But soft!\n\n\nGrüße aus Köln, naïve café 😀🎉\n\n  two  spaces\tand a tab 2024\n"
LOADING_KEYS = frozenset({"is_local", "local_files_only"})
LLAMA = GPTConfig(
    vocab_size=50257, block_size=64, n_layer=2, n_head=4, n_embd=64, arch="llama",
    n_kv_head=2, rope_base=5000.0, tie_embeddings=False, mlp_hidden=96,
)  # fmt: skip
GPT2_MODEL = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=4, n_embd=64, bias=True)


class TextTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def save_pretrained(self, folder: str) -> object: ...


cli = run_cli


# Sampled as the export's generation_config says; [export.hf] on.
HF_EXPORT: Settings = {
    "sample.sample": {"start": "ROMEO:", "temperature": 0.7},
    "export.hf.enabled": True,
}


def experiment(
    folder: Path, model: GPT, spec: TokenizerSpec, settings: Settings | None = None
) -> Path:
    return saved_gpt(folder, model, spec, {**HF_EXPORT, **(settings or {})})


def exported(tmp_path: Path, model: GPT, spec: TokenizerSpec) -> Path:
    folder = experiment(tmp_path / "exp", model, spec)

    result = cli(tmp_path, "export", folder)

    assert result.returncode == 0, result.stderr
    hf_dir = folder / "export" / "hf"
    assert f"exported {hf_dir} (Hugging Face folder" in result.stdout
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (hf_dir / name).is_file(), name
    assert not (folder / "export" / "model.gguf").exists()  # [export.ollama] is off
    return hf_dir


def load_model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - slow import

    loaded: Any = AutoModelForCausalLM.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
        str(folder), dtype=torch.float32, trust_remote_code=False, output_loading_info=True
    )
    model, info = cast(tuple[torch.nn.Module, dict[str, Any]], loaded)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    return model.eval()


def load_tokenizer(folder: Path) -> TextTokenizer:
    from transformers import AutoTokenizer  # noqa: PLC0415 - slow import

    return cast(
        TextTokenizer,
        AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False),  # pyright: ignore[reportUnknownMemberType] - untyped
    )


def assert_runs_like(model: GPT, folder: Path, ids: list[int], architecture: str) -> None:
    theirs = load_model(folder)
    assert type(theirs).__name__ == architecture
    assert max_logit_difference(model, theirs, ids) < 1e-4
    assert their_greedy(theirs, ids) == our_greedy(model, ids)


def assert_round_trip_changes_nothing(folder: Path, tmp_path: Path) -> None:
    """Load the folder with transformers, save it again: the same tensors and configs."""
    from safetensors.torch import load_file  # noqa: PLC0415  # pyright: ignore[reportUnknownVariableType] - its PathLike is unparameterised

    again = tmp_path / "saved_again"
    model: Any = load_model(folder)  # a PreTrainedModel, which transformers leaves untyped
    model.save_pretrained(str(again))
    load_tokenizer(folder).save_pretrained(str(again))
    ours, theirs = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert _json(folder / name) == _json(again / name), name
    # transformers 5 writes back how it was loaded (offline, from a folder); nothing more.
    saved = cast(dict[str, object], _json(again / "tokenizer_config.json"))
    assert _json(folder / "tokenizer_config.json") == {
        key: value for key, value in saved.items() if key not in LOADING_KEYS
    }


def _json(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_llama_run_exports_a_folder_transformers_runs_like_our_model(tmp_path: Path) -> None:
    model = unit_scale_gpt(LLAMA, seed=1)
    hf_dir = exported(tmp_path, model, GPT2)

    ours = tokenizer_from_spec(GPT2)
    tokenizer = load_tokenizer(hf_dir)
    assert tokenizer.encode(TEXT) == ours.encode(TEXT)
    assert tokenizer.decode(ours.encode(TEXT)) == TEXT
    config = _json(hf_dir / "config.json")
    assert isinstance(config, dict)
    assert config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == 96
    assert config["rope_parameters"]["rope_theta"] == 5000.0
    assert config["vocab_size"] == 50257  # the 50304 padded rows dropped, as the tokenizer
    assert_runs_like(model, hf_dir, ours.encode(PROMPT), "LlamaForCausalLM")
    assert_round_trip_changes_nothing(hf_dir, tmp_path)
    card = (hf_dir / "README.md").read_text(encoding="utf-8")
    assert "| best val loss | 3.2500 |" in card  # the checkpoint's, without a run report
    assert "as `LlamaForCausalLM` with no custom code" in card

    again = cli(tmp_path, "export", hf_dir.parent.parent)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout


def test_a_gpt2_run_exports_a_gpt2_folder_with_tied_embeddings(tmp_path: Path) -> None:
    model = unit_scale_gpt(GPT2_MODEL, seed=2)
    hf_dir = exported(tmp_path, model, GPT2)

    ours = tokenizer_from_spec(GPT2)
    assert load_tokenizer(hf_dir).encode(TEXT) == ours.encode(TEXT)
    config = _json(hf_dir / "config.json")
    assert isinstance(config, dict)
    assert (config["model_type"], config["tie_word_embeddings"]) == ("gpt2", True)
    from safetensors.torch import load_file  # noqa: PLC0415  # pyright: ignore[reportUnknownVariableType] - its PathLike is unparameterised

    assert "lm_head.weight" not in load_file(hf_dir / "model.safetensors")  # tied: stored once
    assert_runs_like(model, hf_dir, ours.encode(PROMPT), "GPT2LMHeadModel")
    assert_round_trip_changes_nothing(hf_dir, tmp_path)


def test_a_char_level_run_with_qk_norm_exports_and_its_tokenizer_round_trips_every_character(
    tmp_path: Path,
) -> None:
    chars = TokenizerSpec(kind="char", vocab=tuple(sorted(set(shakespeare_text(20_000) + "äöü😀"))))
    config = GPTConfig(
        vocab_size=len(chars.vocab or ()), block_size=32, n_layer=2, n_head=2, n_embd=32,
        arch="llama", qk_norm=True,
    )  # fmt: skip
    model = unit_scale_gpt(config, seed=3)
    hf_dir = exported(tmp_path, model, chars)

    tokenizer, ours = load_tokenizer(hf_dir), tokenizer_from_spec(chars)
    for token_id, char in enumerate(chars.vocab or ()):
        assert tokenizer.encode(char) == [token_id], repr(char)
        assert tokenizer.decode([token_id]) == char
    text = "ROMEO:\nBut soft, what light?\n\n\nGrüße 😀"
    text = "".join(char for char in text if char in (chars.vocab or ()))
    assert tokenizer.encode(text) == ours.encode(text)
    assert tokenizer.decode(ours.encode(text)) == text
    # Outside the vocabulary: no id, dropped (tokenizers' BPE without an unknown token).
    assert tokenizer.encode("a\x00b") == ours.encode("ab")
    assert_runs_like(model, hf_dir, ours.encode("ROMEO: what light?"), "Qwen3ForCausalLM")
    assert_round_trip_changes_nothing(hf_dir, tmp_path)


def test_a_gguf_bundle_written_after_the_hf_folder_keeps_it(tmp_path: Path) -> None:
    model = unit_scale_gpt(GPT2_MODEL.replace(bias=False), seed=4)
    gguf = {"export.ollama.enabled": True}
    folder = experiment(tmp_path / "exp", model, GPT2, gguf)

    result = cli(tmp_path, "export", folder)

    assert result.returncode == 0, result.stderr
    assert (folder / "export" / "model.gguf").is_file()
    hf_dir = folder / "export" / "hf"
    assert (hf_dir / "model.safetensors").is_file()
    before = sha256_of_files(hf_dir)
    write_toml(
        folder / "config.toml",
        {**SAVED_GPT_RUN, **HF_EXPORT, **gguf, "export.ollama.quant": "f32"},
    )
    again = cli(tmp_path, "export", folder)
    assert again.returncode == 0, again.stderr
    assert "up to date: " + str(hf_dir) in again.stdout
    assert f"exported {folder / 'export' / 'model.gguf'} (f32" in again.stdout
    assert sha256_of_files(hf_dir) == before


def test_a_tiktoken_encoding_other_than_gpt2_is_refused_in_one_line(tmp_path: Path) -> None:
    model = unit_scale_gpt(
        GPTConfig(vocab_size=100277, block_size=8, n_layer=1, n_head=1, n_embd=8), 0
    )
    folder = experiment(
        tmp_path / "exp", model, TokenizerSpec(kind="tiktoken", encoding="cl100k_base")
    )

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "cannot export tiktoken encoding 'cl100k_base' as a Hugging Face tokenizer" in line
    assert not (folder / "export").exists()


def test_an_hf_export_dir_holding_foreign_files_is_one_error_line_and_stays(tmp_path: Path) -> None:
    chars = TokenizerSpec(kind="char", vocab=tuple(" abc"))
    model = unit_scale_gpt(GPTConfig(vocab_size=4, block_size=8, n_layer=1, n_head=1, n_embd=8), 0)
    folder = experiment(tmp_path / "exp", model, chars, {"export.hf.export_dir": "mine"})
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "[export.hf] export_dir" in line
    assert (folder / "mine" / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_hf_export_of_a_fine_tuned_run_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "ft"
    (tmp_path / "base").mkdir()
    lora_run(folder, tmp_path / "base", {"export.hf.enabled": True})

    line = assert_one_error_line(cli(tmp_path, "export", folder))

    assert "[export.hf] exports a GPT trained from scratch" in line
    assert not (folder / "export").exists()


@pytest.fixture(autouse=True)
def _offline() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
