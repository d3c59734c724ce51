"""The fast decode step (`GPT.decode` through a `CacheSlot` and the transposed head) equals
the plain path: the whole window recomputed by `forward` for every token."""

from __future__ import annotations

import pytest
import torch

from benchmarks.sampling import uncached_step
from ml_playground.config import SampleSettings
from ml_playground.model.gpt import GPT
from ml_playground.sample.filters import sample_next
from ml_playground.sample.generate import Step, generate
from ml_playground.sample.gpt import gpt_step
from tests.unit.test_gpt import (
    TINY,
    random_ids,
    single_thread,  # noqa: F401  # pyright: ignore[reportUnusedImport] - an autouse fixture, active here by being imported
)
from tests.unit.test_llama import SHAPES, unit_scale


def recorded(step: Step, seen: list[torch.Tensor]) -> Step:
    def record(ids: torch.Tensor) -> torch.Tensor:
        logits = step(ids)
        seen.append(logits.float())
        return logits

    return record


def logits_and_tokens(
    model: GPT, step: Step, prompt: list[int], new_tokens: int
) -> tuple[list[torch.Tensor], list[int]]:
    seen: list[torch.Tensor] = []
    greedy = SampleSettings(max_new_tokens=new_tokens, temperature=0.0)
    [row] = generate(recorded(step, seen), prompt, greedy)
    return seen, row.ids


def plain_logits(model: GPT, sequence: list[int], window: int) -> torch.Tensor:
    """The reference: next-token logits of the last `window` ids, without any cache."""
    ids = torch.tensor([sequence[-window:]])
    with torch.inference_mode():
        logits = model.next_token_logits(model(ids))
    return logits[:, : model.config.vocab_size]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_decoded_token_has_the_logits_of_the_whole_window_recomputed(shape: str) -> None:
    config = SHAPES[shape]
    model = unit_scale(config)
    prompt = [int(i) for i in random_ids(config, batch=1, length=3)[0]]
    new_tokens = config.block_size - 3  # within block_size: no window moves yet

    seen, tokens = logits_and_tokens(model, gpt_step(model), prompt, new_tokens)

    _, plain_tokens = logits_and_tokens(model, uncached_step(model), prompt, new_tokens)
    assert tokens == plain_tokens
    sequence = prompt + tokens
    for index, logits in enumerate(seen):
        expected = plain_logits(model, sequence[: len(prompt) + index], config.block_size)
        assert logits.shape == (1, config.vocab_size)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def forward_cached_step(model: GPT) -> Step:
    """One `forward_cached` per token into a `KVCache` slid by `drop_oldest`: the plain
    cached path the slot-based decode replaces, for a llama model past block_size."""
    cache = model.new_kv_cache(1)

    def step(ids: torch.Tensor) -> torch.Tensor:
        overflow = cache.length + ids.size(1) - cache.capacity
        if overflow > 0:
            cache.drop_oldest(overflow)
        logits = model.forward_cached(ids, cache, last_only=True)
        return model.next_token_logits(logits)[:, : model.config.vocab_size]

    return step


def test_a_sliding_llama_window_decodes_what_forward_cached_computes() -> None:
    # Past block_size the cached keys and values were computed while older tokens were in
    # view, so the reference is the cache slid the same way, not the window recomputed.
    config = SHAPES["llama, QK-norm, 1 kv head, untied"]
    model = unit_scale(config)
    prompt = [int(i) for i in random_ids(config, batch=1, length=3)[0]]

    seen, tokens = logits_and_tokens(model, gpt_step(model), prompt, 3 * config.block_size)
    plain, plain_tokens = logits_and_tokens(
        model, forward_cached_step(model), prompt, 3 * config.block_size
    )

    assert tokens == plain_tokens
    for logits, expected in zip(seen, plain, strict=True):
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_decoding_stays_within_bfloat16_rounding_of_float32() -> None:
    model = unit_scale(SHAPES["llama"])
    prompt = [int(i) for i in random_ids(TINY, batch=1, length=3)[0]]
    reference, tokens = logits_and_tokens(model, gpt_step(model), prompt, 10)

    model.to(torch.bfloat16)
    seen: list[torch.Tensor] = []
    step = recorded(gpt_step(model), seen)
    for token in [prompt, *([t] for t in tokens[:-1])]:
        with torch.inference_mode():
            step(torch.tensor([token]))

    for logits, expected in zip(seen, reference, strict=True):
        scale = expected.abs().max()
        assert (logits - expected).abs().max() <= 0.05 * scale


def test_batched_rows_decode_the_same_logits_as_one_row() -> None:
    model = unit_scale(SHAPES["llama"])
    prompt = [int(i) for i in random_ids(TINY, batch=1, length=3)[0]]
    single, tokens = logits_and_tokens(model, gpt_step(model), prompt, 12)

    seen: list[torch.Tensor] = []
    greedy = SampleSettings(max_new_tokens=12, temperature=0.0, num_samples=3)
    rows = generate(recorded(gpt_step(model), seen), prompt, greedy)

    assert all(row.ids == tokens for row in rows)
    for batch, one in zip(seen, single, strict=True):
        torch.testing.assert_close(batch, one.expand(3, -1), rtol=1e-5, atol=1e-5)


def test_top_k_draws_with_the_probabilities_of_the_k_best_logits_at_the_temperature() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5, 0.0, 3.0, -2.0, 1.0]])
    temperature, top_k, draws = 0.7, 4, 40_000
    generator = torch.Generator().manual_seed(0)

    ids = sample_next(logits.repeat(draws, 1), temperature, top_k, 1.0, generator)

    masked = logits.clone()
    masked[masked < logits.topk(top_k).values[:, -1:]] = float("-inf")
    expected = torch.softmax(masked / temperature, dim=-1)[0]
    observed = torch.bincount(ids, minlength=logits.size(-1)).float() / draws
    torch.testing.assert_close(observed, expected, atol=0.01, rtol=0.0)
