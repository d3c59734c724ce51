"""The decode loop every backend shares: a batch of rows, one sampled token per step.

A backend supplies only a `Step`: a function that takes the ids not yet seen (the
prompt on the first call, then each step's new token) and returns the logits of the
next token, keeping its own key/value cache between calls. All rows are decoded in one
batch, so each step reads the weights once however many samples are asked for. A row
ends at its first stop id (not part of its output) or after max_new_tokens; finished
rows stay in the batch, since dropping them would mean reshaping every backend's cache,
but nothing of theirs is kept or reported any more.

How fast it went (`Speed`) is timed at the one host transfer each step already makes, so
timing adds no synchronisation: the prompt's time runs until its first tokens are on the
host, the generation's from there to the last.
"""

from __future__ import annotations

import time
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


@dataclass(frozen=True)
class Speed:
    """How fast a `generate` call went, for the line `sample` and `chat` end with."""

    prompt_tokens: int  # per row
    rows: int
    prompt_seconds: float  # the prompt's forward pass and the first draw
    generated_tokens: int  # kept, all rows together
    later_steps: int  # steps after the prompt's, each one token per row
    later_seconds: float

    def line(self) -> str:
        """One line as llama.cpp and `ollama run --verbose` end a reply: the prompt's tokens
        and rate, then the generated tokens and the rate the later steps decoded at (every
        row counts, so a batch's rate is its throughput)."""
        rows = f" x {self.rows} rows" if self.rows > 1 else ""
        prompt = _rate(self.prompt_tokens * self.rows, self.prompt_seconds)
        decode = _rate(self.later_steps * self.rows, self.later_seconds)
        return (
            f"speed: prompt {self.prompt_tokens} tokens{rows} at {prompt}, "
            f"generated {self.generated_tokens} tokens at {decode}"
        )


def _rate(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:,.1f} tokens/s" if tokens and seconds > 0 else "n/a tokens/s"


OnSpeed = Callable[[Speed], None]


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
    on_speed: OnSpeed | None = None,
) -> list[Continuation]:
    """Continue `prompt_ids` in settings.num_samples rows at once, one Continuation each.

    The draw uses settings' temperature, top_k and top_p; `generator` must live on the
    device of the logits `step` returns. `on_speed` hears how fast it went, at the end.
    """
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one id")
    rows = [Continuation() for _ in range(settings.num_samples)]
    ids = torch.tensor([list(prompt_ids)] * len(rows), dtype=torch.long)
    started = time.perf_counter()
    first_on_host = started
    steps = 0
    for _ in range(settings.max_new_tokens):
        logits = step(ids)
        ids = sample_next(logits, settings.temperature, settings.top_k, settings.top_p, generator)[
            :, None
        ]
        # One transfer from the device per step, not one per row.
        tokens = [int(token) for token in ids[:, 0].cpu()]
        steps += 1
        if steps == 1:
            first_on_host = time.perf_counter()
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
    if on_speed is not None:
        on_speed(
            Speed(
                prompt_tokens=len(prompt_ids),
                rows=len(rows),
                prompt_seconds=first_on_host - started,
                generated_tokens=sum(len(row.ids) for row in rows),
                later_steps=max(steps - 1, 0),
                later_seconds=time.perf_counter() - first_on_host,
            )
        )
    return rows
