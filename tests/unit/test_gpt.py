"""The from-scratch GPT: shapes, loss, KV cache, next-token logits, optimizer, config.

Generation with it (the decode step, the loop, the filters) is tested in test_generate.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from ml_playground.data.batches import IGNORE_INDEX
from ml_playground.errors import CheckpointError
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.sample.filters import sample_next

TINY = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run these tiny models on one thread.

    Their matmuls are far too small to gain from intra-op threads, and with pytest-xdist
    workers sharing the cores, torch's spinning thread pools slow each op down a hundredfold.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(config: GPTConfig = TINY, seed: int = 0) -> GPT:
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    return GPT(config).eval()


def context_sensitive_model() -> GPT:
    """A tiny model whose greedy choice depends on the whole context window.

    At GPT-2's small init the argmax mostly echoes the current token's own embedding, so a
    test comparing two generation paths would pass whatever context each path saw.
    Unit-scale random weights make every token and position matter.
    """
    model = tiny_model()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 1.0)
    return model


def random_ids(config: GPTConfig, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length), generator=generator)


# --- forward ----------------------------------------------------------------------------


def test_padded_vocab_size_rounds_up_to_a_multiple_of_64() -> None:
    assert TINY.padded_vocab_size == 64
    assert TINY.replace(vocab_size=64).padded_vocab_size == 64
    assert TINY.replace(vocab_size=65).padded_vocab_size == 128


def test_logits_span_the_padded_vocab_and_initial_loss_is_near_uniform() -> None:
    model = tiny_model()
    idx = random_ids(TINY, batch=4, length=TINY.block_size)
    targets = random_ids(TINY, batch=4, length=TINY.block_size, seed=2)

    logits = model(idx)
    loss = model(idx, targets)

    assert logits.shape == (4, TINY.block_size, TINY.padded_vocab_size)
    assert loss.shape == ()
    assert torch.isfinite(loss)
    # Small init makes the softmax nearly uniform over every (padded) output id.
    assert loss.item() == pytest.approx(math.log(TINY.padded_vocab_size), abs=0.1)


def test_loss_equals_cross_entropy_of_the_logits() -> None:
    model = tiny_model()
    idx = random_ids(TINY, batch=2, length=TINY.block_size)
    targets = random_ids(TINY, batch=2, length=TINY.block_size, seed=2)

    expected = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())

    assert model(idx, targets).item() == pytest.approx(expected.item(), abs=1e-6)


def test_loss_ignores_targets_marked_with_the_ignore_index() -> None:
    model = tiny_model()
    idx = random_ids(TINY, batch=1, length=8)
    targets = random_ids(TINY, batch=1, length=8, seed=2)
    masked = targets.clone()
    masked[:, 4:] = IGNORE_INDEX

    loss_first_half = model(idx[:, :4], targets[:, :4])
    loss_masked = model(idx, masked)

    # Causal attention: the first four positions do not depend on the later tokens.
    assert loss_masked.item() == pytest.approx(loss_first_half.item(), abs=1e-6)


def test_forward_rejects_sequences_longer_than_block_size() -> None:
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        tiny_model()(random_ids(TINY, batch=1, length=TINY.block_size + 1))


def test_lm_head_shares_its_weight_with_the_token_embedding() -> None:
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_parameter_names_follow_gpt2_conventions() -> None:
    # The GGUF exporter maps exactly these names onto llama.cpp's gpt2 tensors.
    names = set(tiny_model(TINY.replace(bias=True)).state_dict())
    layer = {
        f"transformer.h.0.{name}.{kind}"
        for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
        for kind in ("weight", "bias")
    }
    top = {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
    }
    assert {name for name in names if not name.startswith("transformer.h.1.")} == top | layer


def test_residual_projections_start_smaller_than_other_matrices() -> None:
    params = dict(tiny_model(TINY.replace(n_layer=8, n_embd=64)).named_parameters())
    c_proj = params["transformer.h.0.mlp.c_proj.weight"]
    c_fc = params["transformer.h.0.mlp.c_fc.weight"]
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.1)
    assert c_proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)


def test_bias_free_model_has_no_bias_parameters_and_biased_model_has_zero_biases() -> None:
    without = tiny_model()
    with_bias = tiny_model(TINY.replace(bias=True))

    assert not [name for name, _ in without.named_parameters() if name.endswith("bias")]
    biases = [p for name, p in with_bias.named_parameters() if name.endswith("bias")]
    assert biases
    assert all(torch.count_nonzero(p).item() == 0 for p in biases)


# --- KV cache ---------------------------------------------------------------------------


def test_kv_cache_logits_equal_full_forward_logits_at_every_position() -> None:
    model = tiny_model()
    idx = random_ids(TINY, batch=2, length=TINY.block_size)
    prompt_length = 5
    full = model(idx)

    cache = model.new_kv_cache(batch_size=2)
    with torch.no_grad():
        pieces = [model.forward_cached(idx[:, :prompt_length], cache)]
        pieces += [
            model.forward_cached(idx[:, t : t + 1], cache)
            for t in range(prompt_length, TINY.block_size)
        ]
    cached = torch.cat(pieces, dim=1)

    assert cache.length == TINY.block_size
    assert cached.shape == full.shape
    assert (cached - full).abs().max().item() <= 1e-5


def test_kv_cache_accepts_multi_token_chunks_after_the_prefill() -> None:
    model = tiny_model()
    idx = random_ids(TINY, batch=1, length=12)
    full = model(idx)

    cache = model.new_kv_cache(batch_size=1)
    with torch.no_grad():
        cached = torch.cat(
            [model.forward_cached(idx[:, a:b], cache) for a, b in ((0, 4), (4, 9), (9, 12))],
            dim=1,
        )

    assert cached.shape == full.shape
    assert (cached - full).abs().max().item() <= 1e-5


def test_last_only_logits_are_the_last_position_of_the_full_logits() -> None:
    model = tiny_model()
    idx = random_ids(TINY, batch=2, length=7)

    with torch.no_grad():
        last = model(idx, last_only=True)
        full = model(idx)

    assert last.shape == (2, 1, TINY.padded_vocab_size)
    assert torch.allclose(last, full[:, -1:], atol=1e-6)


def test_kv_cache_refuses_to_grow_past_block_size() -> None:
    model = tiny_model()
    cache = model.new_kv_cache(batch_size=1)
    with torch.no_grad():
        model.forward_cached(random_ids(TINY, batch=1, length=TINY.block_size), cache)
        with pytest.raises(ValueError, match="exceed block_size"):
            model.forward_cached(random_ids(TINY, batch=1, length=1), cache)


def test_padded_ids_are_masked_even_when_their_logits_dominate() -> None:
    model = tiny_model()
    logits = torch.zeros(4, 1, TINY.padded_vocab_size)
    logits[..., TINY.vocab_size :] = 1e4
    generator = torch.Generator().manual_seed(0)

    masked = model.next_token_logits(logits)
    greedy = sample_next(masked, temperature=0.0, top_k=0, top_p=1.0, generator=None)
    sampled = sample_next(masked, temperature=1.0, top_k=0, top_p=1.0, generator=generator)

    assert torch.all(masked[:, TINY.vocab_size :] == float("-inf"))
    assert int(greedy.max()) < TINY.vocab_size
    assert int(sampled.max()) < TINY.vocab_size


# --- training ---------------------------------------------------------------------------


def test_model_overfits_a_tiny_fixed_batch() -> None:
    model = tiny_model().train()
    idx = random_ids(TINY, batch=4, length=TINY.block_size + 1)
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    losses: list[float] = []
    for _ in range(50):
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves `closure` unannotated
        losses.append(loss.item())

    assert losses[-1] < 0.1 * losses[0]


def test_parameter_count_and_flops_follow_the_model_shape() -> None:
    model = tiny_model()
    total = sum(p.numel() for p in model.parameters())
    position_table = TINY.block_size * TINY.n_embd

    assert model.num_parameters(exclude_embeddings=False) == total
    assert model.num_parameters() == total - position_table
    attention = 12 * TINY.n_layer * TINY.n_embd * TINY.block_size
    assert model.flops_per_token() == 6 * (total - position_table) + attention


# --- config -----------------------------------------------------------------------------


def test_config_survives_a_round_trip_through_a_plain_dict() -> None:
    config = TINY.replace(dropout=0.1, bias=True)
    as_dict = config.to_dict()
    assert all(isinstance(value, int | float | bool | str | None) for value in as_dict.values())
    assert GPTConfig.from_dict(json.loads(json.dumps(as_dict))) == config


def test_config_from_dict_with_a_missing_key_raises_checkpoint_error() -> None:
    as_dict = TINY.to_dict()
    del as_dict["n_head"]
    with pytest.raises(CheckpointError, match="missing n_head"):
        GPTConfig.from_dict(as_dict)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_layer", "2", "'n_layer' input should be a valid integer"),
        ("n_layer", True, "'n_layer' input should be a valid integer"),
        ("bias", 1, "'bias' input should be a valid boolean"),
        ("dropout", "0.1", "'dropout' input should be a valid number"),
        ("n_head", 3, "divisible by n_head"),
        ("block_size", 0, "'block_size' input should be greater than or equal to 1"),
    ],
)
def test_config_from_dict_rejects_bad_values_with_checkpoint_error(
    key: str, value: object, message: str
) -> None:
    as_dict: dict[str, object] = {**TINY.to_dict(), key: value}
    with pytest.raises(CheckpointError, match=message):
        GPTConfig.from_dict(as_dict)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(CheckpointError, match="'n_groups' extra inputs are not permitted"):
        GPTConfig.from_dict({**TINY.to_dict(), "n_groups": 2})
