"""Pretrain → Hugging Face folder → LoRA fine-tune → GGUF, through the CLI, on a tiny GPT.

A llama-style GPT checkpoint on GPT-2's BPE is exported with `[export.hf]`; the bundled
`shakespeare_sft` experiment (copied, with tiny settings) fine-tunes that folder with the
LoRA backend (`loop`: prepare its chat records with `[prepare] chat_template`, train a
few steps, sample) and exports GGUF with llama.cpp's real converter. Judged by readers we
did not write: transformers' GGUF reader must compute the merged model's logits, and
`eval` of the exported folder (the fine-tune's base score) must equal the GPT's own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from ml_playground.data.tokenizer import TokenizerSpec, tokenizer_from_spec
from ml_playground.experiments import EXPERIMENTS_ROOT
from ml_playground.model.config import GPTConfig
from tests.cli_helpers import run_cli
from tests.experiments import CPU_FLOAT32_RUN, shakespeare_text
from tests.export_helpers import save_checkpoint
from tests.gguf_helpers import PROMPT, transformers_logits, unit_scale_gpt
from tests.llama_cpp_helpers import export_cli, require_converters
from tests.toml_helpers import TomlValue, write_toml

BUNDLED = EXPERIMENTS_ROOT / "shakespeare_sft"
GPT2 = TokenizerSpec(kind="tiktoken", encoding="gpt2")
PRETRAINED = GPTConfig(
    vocab_size=50257, block_size=64, n_layer=2, n_head=4, n_embd=32, arch="llama", n_kv_head=2
)
TINY_FINE_TUNE: Mapping[str, TomlValue] = {
    "prepare.source": "records",
    "prepare.records_path": "chats.jsonl",
    "prepare.format": "messages",
    "prepare.chat_template": "FILE:chat.jinja",
    "prepare.dataset_dir": "datasets/sft",
    "train.hf_model.model_name": "../pretrain/export/hf",
    "train.hf_model.block_size": 64,
    "train.hf_model.gradient_checkpointing": False,
    "train.hf_model.dtype": "float32",
    "train.hf_model.save_merged": True,
    "train.peft.r": 4,
    "train.peft.lora_alpha": 8,
    "train.peft.lora_dropout": 0.0,
    "train.peft.extend_mlp_targets": True,
    "train.data.batch_size": 2,
    "train.optim.learning_rate": 0.01,
    "train.schedule.warmup_iters": 1,
    "train.schedule.lr_decay_iters": 4,
    "train.schedule.min_lr": 0.001,
    "train.runtime.out_dir": "out/sft",
    "train.runtime.max_iters": 4,
    "train.runtime.eval_interval": 2,
    "train.runtime.eval_iters": 1,
    "train.runtime.log_interval": 1,
    "train.runtime.device": "cpu",
    "train.runtime.dtype": "float32",
    "train.runtime.tensorboard_enabled": False,
    "sample.sample.start": "Q: Speak as Romeo.\nA:",
    "sample.sample.max_new_tokens": 8,
    "sample.sample.temperature": 0.0,
    "sample.sample.stream": False,
    "export.ollama.enabled": True,
    "export.ollama.export_dir": "export/gguf",
    "export.ollama.quant": "f32",
}


cli = run_cli


def load(folder: Path, **options: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - slow import

    model: Any = AutoModelForCausalLM.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
        str(folder), dtype=torch.float32, trust_remote_code=False, **options
    )
    return cast(torch.nn.Module, model).eval()


def scores(result: Path) -> dict[str, dict[str, Any]]:
    """An eval result's scores by model: "trained" (a GPT), "fine-tuned", "base (...)"."""
    raw = cast(dict[str, Any], json.loads(result.read_text(encoding="utf-8")))
    return {score["model"]: score for score in cast(list[dict[str, Any]], raw["scores"])}


def test_an_exported_gpt_fine_tunes_with_lora_and_converts_to_a_gguf_of_the_merged_model(
    tmp_path: Path,
) -> None:
    require_converters()
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    write_toml(pretrain / "config.toml", {**CPU_FLOAT32_RUN, "export.hf.enabled": True})
    save_checkpoint(pretrain / "out", unit_scale_gpt(PRETRAINED, seed=5), GPT2)
    text = tmp_path / "text.txt"
    text.write_text(shakespeare_text(1500), encoding="utf-8")
    exported = cli(tmp_path, "export", pretrain)
    assert exported.returncode == 0, exported.stderr
    gpt_eval = cli(tmp_path, "eval", pretrain, "--text", text)
    assert gpt_eval.returncode == 0, gpt_eval.stderr

    fine_tune = tmp_path / "shakespeare_sft"
    shutil.copytree(BUNDLED, fine_tune, ignore=shutil.ignore_patterns("datasets", "out", "export"))
    write_toml(fine_tune / "config.toml", TINY_FINE_TUNE)
    looped = cli(tmp_path, "loop", fine_tune)
    assert looped.returncode == 0, looped.stderr[-3000:]
    assert "--- sample 1/1 ---" in looped.stderr
    ft_eval = cli(tmp_path, "eval", fine_tune, "--text", text)
    assert ft_eval.returncode == 0, ft_eval.stderr
    export_cli(tmp_path, fine_tune)

    # The exported folder scores the text exactly as the GPT it came from.
    ours = scores(pretrain / "out" / "eval" / "text" / "text.json")["trained"]
    base = scores(fine_tune / "out" / "sft" / "eval" / "text" / "text.json")["base (adapters off)"]
    assert ours["targets"] == base["targets"]
    assert abs(ours["loss"] - base["loss"]) < 1e-4
    assert abs(ours["bits_per_byte"] - base["bits_per_byte"]) < 1e-4

    ids = tokenizer_from_spec(GPT2).encode(PROMPT)
    merged = transformers_logits(load(fine_tune / "out" / "sft" / "merged"), ids)
    gguf_dir = fine_tune / "export" / "gguf"
    from_gguf = transformers_logits(load(gguf_dir, gguf_file="model.gguf"), ids)
    before = transformers_logits(load(pretrain / "export" / "hf"), ids)
    print(f"max |merged - gguf| = {(merged - from_gguf).abs().max().item():.3g}")
    assert (merged - from_gguf).abs().max().item() < 1e-4
    assert (merged - before).abs().max().item() > 1e-3  # the adapters changed the model
