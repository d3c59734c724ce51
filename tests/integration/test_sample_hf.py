"""The Hugging Face backend's decode step under the shared loop: batches and seeds.

The tiny random Qwen2 and Gemma3 models of tests/finetune_helpers.py, untrained: what is
tested is how rows of a batch relate to single samples, not what they say.
"""

from __future__ import annotations

from typing import cast

import pytest
import torch
from torch import nn

from ml_playground.config import SampleSettings
from ml_playground.device import Precision
from ml_playground.sample.generate import generate
from ml_playground.sample.hf import hf_step
from tests.finetune_helpers import Family, TinyModels

PROMPT = [5, 17, 42, 7]
CPU = Precision(torch.device("cpu"), torch.float32)


def tiny(tiny_models: TinyModels, family: Family) -> tuple[nn.Module, int]:
    from transformers import AutoModelForCausalLM, PreTrainedModel  # noqa: PLC0415 - heavy

    loaded: object = AutoModelForCausalLM.from_pretrained(str(tiny_models.of(family)))  # pyright: ignore[reportUnknownMemberType] - untyped library
    model = cast(PreTrainedModel, loaded)  # from_pretrained leaves it in eval mode
    return model, model.config.vocab_size


def continuations(
    model: nn.Module, vocab_size: int, settings: SampleSettings, seed: int = 0
) -> list[list[int]]:
    rows = generate(
        hf_step(model, CPU, vocab_size=vocab_size),
        PROMPT,
        settings,
        generator=torch.Generator().manual_seed(seed),
    )
    return [row.ids for row in rows]


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_greedy_rows_of_a_batch_equal_the_greedy_single_sample(
    tiny_models: TinyModels, family: Family
) -> None:
    model, vocab_size = tiny(tiny_models, family)
    greedy = SampleSettings(temperature=0.0, max_new_tokens=12)

    [single] = continuations(model, vocab_size, greedy)
    batch = continuations(model, vocab_size, greedy.model_copy(update={"num_samples": 4}))

    assert len(single) == 12
    assert batch == [single] * 4


def test_a_seeded_batch_repeats_exactly_and_another_seed_differs(
    tiny_models: TinyModels,
) -> None:
    model, vocab_size = tiny(tiny_models, "qwen2")
    hot = SampleSettings(temperature=2.0, top_k=0, max_new_tokens=12, num_samples=3)

    first = continuations(model, vocab_size, hot, seed=7)

    assert continuations(model, vocab_size, hot, seed=7) == first
    assert continuations(model, vocab_size, hot, seed=8) != first
    assert first[0] != first[1]
