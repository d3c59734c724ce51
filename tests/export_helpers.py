"""Tiny trained-looking GPT checkpoints and tokenizers for the export tests.

A checkpoint here is a real `train.checkpoint` file holding a small random GPT whose norms
and biases are perturbed away from their init (ones and zeros), so that a tensor written
to the wrong place or transposed changes the logits. Experiment folders around them are
tests/experiments.py's.
"""

from __future__ import annotations

from pathlib import Path

import tiktoken
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT

R50K = "r50k_base"
EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer regex, which r50k_base uses (tiktoken keeps it private).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


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
