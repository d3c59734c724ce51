"""The padded vocabulary: output ids past the tokenizer's, which no text ever holds.

The GPT rounds its embedding up to a multiple of 64 rows (`model/config.py`), and some
Hugging Face models ship more rows than their tokenizer has (Qwen's). Those ids never
occur in training data, yet their logits are finite: sampled, they would be ids no
tokenizer can decode, and scored, they would sit in every prediction's normaliser.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_padded(logits: Tensor, vocab_size: int) -> Tensor:
    """`logits` (..., V) with the ids at or past `vocab_size` at -inf."""
    padded = torch.arange(logits.size(-1), device=logits.device) >= vocab_size
    return logits.masked_fill(padded, float("-inf"))
