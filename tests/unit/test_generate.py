"""Generation: the GPT's decode step, the batched loop with stop ids, and the filters.

The tiny GPT of test_gpt.py stands in for any backend: the loop sees only its step.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.sampling import uncached_step
from ml_playground.config import SampleSettings
from ml_playground.model.gpt import GPT
from ml_playground.sample.filters import sample_next
from ml_playground.sample.generate import Continuation, Step, generate
from ml_playground.sample.gpt import gpt_step
from tests.unit.test_gpt import (
    TINY,
    context_sensitive_model,
    random_ids,
    single_thread,  # noqa: F401  # pyright: ignore[reportUnusedImport] - an autouse fixture, active here by being imported
    tiny_model,
)


def settings(
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> SampleSettings:
    return SampleSettings(
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )


def continue_prompt(
    model: GPT,
    prompt: torch.Tensor,
    how: SampleSettings,
    *,
    seed: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Every row's new tokens as (num_samples, max_new_tokens); `prompt` is (1, T)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    rows = generate(
        gpt_step(model) if use_cache else uncached_step(model),
        [int(token) for token in prompt[0]],
        how,
        generator=generator,
    )
    return torch.tensor([row.ids for row in rows])


# --- the GPT's decode step ----------------------------------------------------------------


def test_greedy_generation_is_identical_with_and_without_cache_within_block_size() -> None:
    model = context_sensitive_model()
    prompt = random_ids(TINY, batch=1, length=4)
    # The last of these tokens is predicted from a context of exactly block_size tokens.
    greedy = settings(TINY.block_size - 4 + 1, temperature=0.0)

    cached = continue_prompt(model, prompt, greedy, use_cache=True)
    uncached = continue_prompt(model, prompt, greedy, use_cache=False)

    assert cached.shape == (1, greedy.max_new_tokens)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_continues_past_block_size(use_cache: bool) -> None:
    model = tiny_model()
    prompt = random_ids(TINY, batch=1, length=3)

    tokens = continue_prompt(
        model, prompt, settings(3 * TINY.block_size, num_samples=2), seed=0, use_cache=use_cache
    )

    assert tokens.shape == (2, 3 * TINY.block_size)
    assert int(tokens.min()) >= 0
    assert int(tokens.max()) < TINY.vocab_size


def test_cached_generation_past_block_size_refills_the_cache_with_the_newest_half_block() -> None:
    model = context_sensitive_model()
    prompt = random_ids(TINY, batch=1, length=TINY.block_size)
    tokens = continue_prompt(model, prompt, settings(2 * TINY.block_size, temperature=0.0))

    # Each prediction saw a window that starts at the full block, falls back to the newest
    # half block whenever the cache is full, and grows by one token per step in between.
    sequence = torch.cat((prompt, tokens), dim=1)
    window = TINY.block_size
    for step in range(tokens.size(1)):
        end = TINY.block_size + step
        with torch.no_grad():
            logits = model(sequence[:, end - window : end])
        assert torch.equal(model.next_token_logits(logits).argmax(dim=-1), tokens[:, step])
        window = window + 1 if window < TINY.block_size else TINY.block_size // 2


@pytest.mark.parametrize("use_cache", [True, False])
def test_prompt_longer_than_block_size_is_cropped_to_its_last_block(use_cache: bool) -> None:
    model = context_sensitive_model()
    long_prompt = random_ids(TINY, batch=1, length=2 * TINY.block_size + 5)
    last_block = long_prompt[:, -TINY.block_size :]
    greedy = settings(6, temperature=0.0)

    from_long = continue_prompt(model, long_prompt, greedy, use_cache=use_cache)
    from_last_block = continue_prompt(model, last_block, greedy, use_cache=use_cache)

    assert from_long.shape == (1, 6)
    assert torch.equal(from_long, from_last_block)


def test_padded_ids_are_never_generated() -> None:
    # Ten real ids padded to 64: unmasked, most samples from a near-uniform model would be padding.
    config = TINY.replace(vocab_size=10)
    model = tiny_model(config)

    tokens = continue_prompt(
        model,
        random_ids(config, batch=1, length=2),
        settings(40, num_samples=8, temperature=5.0),
        seed=0,
    )

    assert int(tokens.max()) < config.vocab_size


# --- the batched loop ---------------------------------------------------------------------


def test_greedy_rows_of_a_batch_equal_greedy_single_samples() -> None:
    model = context_sensitive_model()
    prompt = random_ids(TINY, batch=1, length=3)

    single = continue_prompt(model, prompt, settings(12, temperature=0.0))
    batch = continue_prompt(model, prompt, settings(12, num_samples=4, temperature=0.0))

    assert batch.shape == (4, 12)
    assert all(torch.equal(row, single[0]) for row in batch)


def test_seeded_sampling_repeats_exactly_and_another_seed_differs() -> None:
    model = tiny_model()
    prompt = random_ids(TINY, batch=1, length=3)
    hot = settings(20, num_samples=3, temperature=2.0)

    first = continue_prompt(model, prompt, hot, seed=7)

    assert torch.equal(first, continue_prompt(model, prompt, hot, seed=7))
    assert not torch.equal(first, continue_prompt(model, prompt, hot, seed=8))
    # Rows draw their own tokens: a batch is not one sample repeated.
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize(("top_k", "top_p"), [(1, 1.0), (0, 1e-6)])
def test_top_k_one_and_tiny_top_p_equal_greedy(top_k: int, top_p: float) -> None:
    model = tiny_model()
    prompt = random_ids(TINY, batch=1, length=3)

    greedy = continue_prompt(model, prompt, settings(20, num_samples=2, temperature=0.0))
    filtered = continue_prompt(
        model,
        prompt,
        settings(20, num_samples=2, temperature=3.0, top_k=top_k, top_p=top_p),
        seed=0,
    )

    assert torch.equal(filtered, greedy)


def scripted_step(script: list[list[int]], vocab_size: int = 8) -> tuple[list[int], Step]:
    """A step whose row r picks script[step][r] greedily; records the batch size it saw."""
    seen: list[int] = []
    calls = iter(script)

    def step(ids: torch.Tensor) -> torch.Tensor:
        seen.append(ids.size(0))
        logits = torch.zeros(ids.size(0), vocab_size)
        logits[torch.arange(ids.size(0)), torch.tensor(next(calls))] = 1.0
        return logits

    return seen, step


def test_each_row_ends_at_its_own_stop_id_and_is_not_extended_after_it() -> None:
    stop = 7
    # Row 0 stops at step 2, row 1 never stops, row 2 stops at once.
    script = [[1, 2, stop], [3, 4, 5], [stop, 6, 1], [2, 2, 2]]
    _, step = scripted_step(script)
    shown: list[tuple[int, int]] = []

    rows = generate(
        step,
        [0],
        settings(4, num_samples=3, temperature=0.0),
        stop_ids={stop},
        on_token=lambda row, token: shown.append((row, token)),
    )

    assert rows == [
        Continuation([1, 3], stopped=True),
        Continuation([2, 4, 6, 2], stopped=False),
        Continuation([], stopped=True),
    ]
    assert [token for row, token in shown if row == 0] == [1, 3]
    assert not [token for row, token in shown if row == 2]


def test_generation_ends_when_every_row_has_stopped() -> None:
    stop = 7
    seen, step = scripted_step([[1, stop], [stop, 2], [3, 3]])

    rows = generate(
        step,
        [0, 1],
        settings(50, num_samples=2, temperature=0.0),
        stop_ids={stop},
    )

    assert [row.ids for row in rows] == [[1], []]
    assert seen == [2, 2]  # the prompt, then one step: no third call


# --- filters ------------------------------------------------------------------------------


def test_top_k_samples_only_the_k_most_likely_ids() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]).repeat(500, 1)
    generator = torch.Generator().manual_seed(0)

    ids = sample_next(logits, temperature=1.0, top_k=2, top_p=1.0, generator=generator)

    assert {int(i) for i in ids} == {1, 3}


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.45, {0}), (0.55, {0, 1}), (0.75, {0, 1}), (0.9, {0, 1, 2})]
)
def test_top_p_keeps_the_smallest_set_reaching_the_probability_mass(
    top_p: float, kept: set[int]
) -> None:
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(1000, 1)
    generator = torch.Generator().manual_seed(0)

    ids = sample_next(logits, temperature=1.0, top_k=0, top_p=top_p, generator=generator)

    assert {int(i) for i in ids} == kept


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "message"),
    [(-0.1, 0, 1.0, "temperature"), (1.0, -1, 1.0, "top_k"), (1.0, 0, 0.0, "top_p")],
)
def test_sampling_rejects_out_of_range_settings(
    temperature: float, top_k: int, top_p: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sample_next(torch.zeros(1, 5), temperature, top_k, top_p, generator=None)
