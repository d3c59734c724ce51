"""Picking the next token from logits: temperature, top-k and top-p (nucleus) filtering.

The same draw for every backend, so temperature 0 = greedy, top_k 0 = off and
top_p 1.0 = off mean the same whichever model is sampled.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_next(
    logits: Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Pick one id per row of `logits` (B, V); ids whose logit is -inf are never picked.

    temperature 0 takes the argmax; top_k 0 and top_p 1.0 switch those filters off.
    """
    if temperature < 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p}")
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    if 0 < top_k < logits.size(-1):
        # Sample among the k best ids only: the same distribution as masking the rest to -inf,
        # but the softmax, nucleus sort and draw touch k values instead of the vocabulary.
        # A positive temperature keeps the order, so it divides the k candidates, not the
        # vocabulary: at batch 1 each pass over 50k logits costs about what a small model's
        # layer does.
        candidates, ids = torch.topk(logits, top_k, dim=-1)  # sorted, best first
        candidates = candidates.float() / temperature
        if top_p < 1.0:
            candidates = _keep_sorted_nucleus(candidates, top_p)
        choice = torch.multinomial(torch.softmax(candidates, dim=-1), 1, generator=generator)
        return ids.gather(-1, choice).squeeze(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        logits = _keep_nucleus(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _keep_nucleus(logits: Tensor, top_p: float) -> Tensor:
    """Set to -inf all but the smallest set of most likely ids whose probability is >= top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    return torch.empty_like(logits).scatter(-1, order, _keep_sorted_nucleus(sorted_logits, top_p))


def _keep_sorted_nucleus(sorted_logits: Tensor, top_p: float) -> Tensor:
    """`_keep_nucleus` for logits already sorted best first along the last dimension."""
    probs = torch.softmax(sorted_logits, dim=-1)
    # An id is dropped when the ids ranked above it already reach top_p; the top id never is.
    mass_above = torch.cumsum(probs, dim=-1) - probs
    return sorted_logits.masked_fill(mass_above >= top_p, float("-inf"))
