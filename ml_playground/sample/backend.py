"""What a model backend hands the sampling front end: a trained model, ready to generate.

A backend (the from-scratch GPT in sample/gpt.py, the Hugging Face + LoRA model in
sample/hf.py) loads its run from out_dir and fills in one `LoadedModel`: how
text becomes ids and back, which ids stop a sample, how its records open, and a `Step`
with a fresh key/value cache. Everything else (prompt, batch, stream, save) is written
once, in sample/run.py. A backend that can also be measured on text (`eval`, see
sample/evaluate.py) adds a `Scoring`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ml_playground.device import Precision
from ml_playground.sample.generate import Step


@dataclass(frozen=True)
class Analysis:
    """A report on one sample, saved as JSON beside it."""

    report: dict[str, object]
    summary: str  # shown on the sample's "saved" line, e.g. "2 anomalies in the .json"


# (text as saved, the ids the model added, whether it ended at a stop id) -> Analysis
Analyse = Callable[[str, Sequence[int], bool], Analysis]

Message = Mapping[str, str]
"""One turn of a conversation: {"role": "system" | "user" | "assistant", "content": ...}."""

RenderChat = Callable[[Sequence[Message]], list[int]]
"""The ids of a conversation in the run's chat template, ending where the answer begins."""

Forward = Callable[[Tensor], Tensor]
"""Next-token logits at every position (B, T, V) of a batch of ids (B, T), without a cache."""


@dataclass(frozen=True)
class Scoring:
    """What measuring a model on text needs beyond sampling (sample/evaluate.py)."""

    forward: Forward  # padded ids masked (model/vocab.py), in the precision sampling uses
    context: int  # the longest window forward takes: block_size, or the run's sequence length
    vocab_size: int  # the tokenizer's: ids at or past it are not the model's
    weights: Path | None  # the checkpoint file or adapters folder scored
    precision: Precision
    # Within this context manager `forward` is the base model alone, its LoRA adapters
    # disabled; None where there is no base to compare with.
    base: Callable[[], AbstractContextManager[object]] | None = None


@dataclass(frozen=True)
class LoadedModel:
    description: str  # the first line sampling prints: which weights, in which precision
    device: torch.device  # where the logits of `new_step` live
    new_step: Callable[[], Step]  # a decode step with an empty cache
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]  # the text a user sees: no special tokens
    first_id: int | None  # what an empty prompt starts from (BOS or end-of-text), if any
    stop_ids: frozenset[int]  # end of text and the run's stop tokens
    record_opening: str = ""  # what every training record began with
    analyse: Analyse | None = None
    context_size: int | None = None  # the most tokens the model reads at once, if known
    render_chat: RenderChat | None = None  # None: no chat template, text is continued as is
    scoring: Scoring | None = None  # for `eval`; None where a backend cannot score text
