"""The decode loop every backend shares: a batch of rows, one sampled token per step.

A backend supplies only a `Step`: a function that takes the ids not yet seen (the
prompt on the first call, then each step's new token) and returns the logits of the
next token, keeping its own key/value cache between calls. All rows are decoded in one
batch, so each step reads the weights once however many samples are asked for. A row
ends at its first stop id (not part of its output) or after max_new_tokens; finished
rows stay in the batch, since dropping them would mean reshaping every backend's cache,
but nothing of theirs is kept or reported any more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ml_playground.config import SampleSettings
from ml_playground.sample.filters import sample_next

Step = Callable[[Tensor], Tensor]
"""Next-token logits (B, V) after the ids (B, T) fed so far; ids may be on any device."""

OnToken = Callable[[int, int], None]
"""Called with (row, token) for each token a row keeps, as soon as it is drawn."""


@dataclass
class Continuation:
    """What one row generated after the prompt."""

    ids: list[int] = field(default_factory=list[int])
    stopped: bool = False  # ended at a stop id rather than at max_new_tokens


# inference_mode skips the autograd bookkeeping no_grad still does per op; decoding one
# token runs ~100 small ops, where that bookkeeping shows.
@torch.inference_mode()
def generate(
    step: Step,
    prompt_ids: Sequence[int],
    settings: SampleSettings,
    *,
    stop_ids: Collection[int] = (),
    generator: torch.Generator | None = None,
    on_token: OnToken | None = None,
) -> list[Continuation]:
    """Continue `prompt_ids` in settings.num_samples rows at once, one Continuation each.

    The draw uses settings' temperature, top_k and top_p; `generator` must live on the
    device of the logits `step` returns.
    """
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one id")
    rows = [Continuation() for _ in range(settings.num_samples)]
    ids = torch.tensor([list(prompt_ids)] * len(rows), dtype=torch.long)
    for _ in range(settings.max_new_tokens):
        logits = step(ids)
        ids = sample_next(logits, settings.temperature, settings.top_k, settings.top_p, generator)[
            :, None
        ]
        # One transfer from the device per step, not one per row.
        tokens = [int(token) for token in ids[:, 0].cpu()]
        for index, token in enumerate(tokens):
            row = rows[index]
            if row.stopped:
                continue
            if token in stop_ids:
                row.stopped = True
                continue
            row.ids.append(token)
            if on_token is not None:
                on_token(index, token)
        if all(row.stopped for row in rows):
            break
    return rows
