"""Tiny trained-looking GPT checkpoints and experiment folders for the export tests.

A checkpoint here is a real `train.checkpoint` file holding a small random GPT whose norms
and biases are perturbed away from their init (ones and zeros), so that a tensor written
to the wrong place or transposed changes the logits. Everything lands in the folder a
test passes in (its tmp_path).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tiktoken
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from tests.toml_helpers import write_toml

R50K = "r50k_base"
EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer regex, which r50k_base uses (tiktoken keeps it private).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TomlValue = str | int | float | bool | list[str]
SAMPLE_DEFAULTS: Mapping[str, TomlValue] = {
    "start": "ROMEO:",
    "temperature": 0.7,
    "top_k": 40,
    "top_p": 0.9,
}


def gpt2_encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(R50K)


def tiny_bpe_encoding(n_ranks: int = 600) -> tiktoken.Encoding:
    """GPT-2's BPE cut down to its first `n_ranks` ranks, plus <|endoftext|> after them.

    Every merge of a rank below the cut produces a token of a lower rank, so the cut is a
    complete byte-level BPE of its own: a tiny tiktoken encoding for fast round trips.
    """
    full = gpt2_encoding()
    ranks = {full.decode_single_token_bytes(rank): rank for rank in range(n_ranks)}
    return tiktoken.Encoding(
        name=f"r50k_first_{n_ranks}",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: n_ranks},
    )


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A GPT with random weights and, unlike at init, non-trivial norms and biases."""
    torch.default_generator.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" in name or "_norm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def save_checkpoint(
    out_dir: Path, model: GPT, spec: TokenizerSpec, name: str = run_folder.BEST_FILE
) -> Path:
    path = out_dir / name
    checkpoint.save(
        path,
        checkpoint.Checkpoint(
            model=model.state_dict(),
            state=checkpoint.TrainingState(
                iter_num=42, best_val_loss=3.25, optimizer={}, scaler=None, rng=[], sampler=[]
            ),
            model_args=model.config,
            config={},
            tokenizer=spec,
        ),
    )
    return path


def write_experiment(
    folder: Path, export: Mapping[str, TomlValue], sample: Mapping[str, TomlValue] | None = None
) -> Path:
    """An experiment folder whose config points out_dir at `folder/out`; returns config.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Mapping[str, TomlValue]] = {
        "train.runtime": {"out_dir": "out", "device": "cpu"},
        "sample.sample": {**SAMPLE_DEFAULTS, **(sample or {})},
        "export.ollama": export,
    }
    return write_toml(
        folder / "config.toml",
        {
            f"{section}.{key}": value
            for section, keys in sections.items()
            for key, value in keys.items()
        },
    )


# A run of a saved model on the CPU in float32, out_dir beside the config.
CPU_FLOAT32_RUN: Mapping[str, TomlValue] = {
    "train.runtime.out_dir": "out",
    "train.runtime.device": "cpu",
    "train.runtime.dtype": "float32",
}
CHAT_CHARS = "\n abcdefghijklmnopqrstuvwxyz:"


def char_gpt_experiment(
    folder: Path, *, block_size: int, max_new_tokens: int, seed: int = 0
) -> Path:
    """An experiment folder whose out/ holds a random character-level GPT over CHAT_CHARS
    (no end-of-text token: every reply runs to max_new_tokens), sampled greedily on the
    CPU; returns its config.toml."""
    spec = TokenizerSpec(kind="char", vocab=tuple(CHAT_CHARS))
    args = GPTConfig(
        vocab_size=len(CHAT_CHARS), block_size=block_size, n_layer=1, n_head=2, n_embd=16
    )
    save_checkpoint(folder / "out", random_gpt(args, seed), spec)
    return write_toml(
        folder / "config.toml",
        {
            **CPU_FLOAT32_RUN,
            "sample.sample.temperature": 0.0,
            "sample.sample.max_new_tokens": max_new_tokens,
        },
    )
