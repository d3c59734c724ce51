"""The `llama` architecture: rotary positions, RMSNorm, SwiGLU, QK-norm, grouped-query
attention, its KV cache (also past block_size) and loading checkpoints from before it."""

from __future__ import annotations

import math

import pytest
import torch

from ml_playground.errors import CheckpointError
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT, LlamaBlock, apply_rotary, rotary_angles
from ml_playground.sample.gpt import gpt_step
from tests.unit.test_generate import continue_prompt, settings
from tests.unit.test_gpt import (
    TINY,
    random_ids,
    single_thread,  # noqa: F401  # pyright: ignore[reportUnusedImport] - an autouse fixture, active here by being imported
)

LLAMA = TINY.replace(arch="llama")
SHAPES = {
    "gpt2": TINY,
    "llama": LLAMA,
    "llama, QK-norm, 1 kv head, untied": LLAMA.replace(
        qk_norm=True, n_kv_head=1, tie_embeddings=False
    ),
}


def unit_scale(config: GPTConfig, seed: int = 0) -> GPT:
    """A model whose every output depends on every token and position (see test_gpt)."""
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    model = GPT(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name and "ln_" not in name:
                param.normal_(0.0, 1.0 / math.sqrt(param.size(-1)) if param.dim() > 1 else 1.0)
    return model


def llama_block(model: GPT, index: int) -> LlamaBlock:
    block = model.transformer.h[index]
    assert isinstance(block, LlamaBlock)
    return block


# --- rotary positions -------------------------------------------------------------------


def test_rotary_equals_multiplying_adjacent_pairs_by_a_unit_complex_number() -> None:
    # The formulation of Meta's reference Llama: pair i of the vector at position p is the
    # complex number x[2i] + j*x[2i+1], multiplied by exp(j * p * base^(-2i/d)).
    head_dim, base = 8, 500.0
    x = torch.randn(2, 3, 5, head_dim, dtype=torch.float64).float()
    positions = torch.arange(7, 12)
    cos, sin = rotary_angles(positions, head_dim, base)

    ours = apply_rotary(x, cos, sin)

    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    phase = torch.polar(
        torch.ones(5, head_dim // 2, dtype=torch.float64), positions[:, None] * freqs
    )
    as_complex = torch.view_as_complex(x.double().reshape(2, 3, 5, head_dim // 2, 2).contiguous())
    reference = torch.view_as_real(as_complex * phase).reshape(2, 3, 5, head_dim)
    torch.testing.assert_close(ours, reference.float(), rtol=1e-5, atol=1e-5)


def test_rotary_as_one_complex_product_equals_rotating_even_and_odd_values_with_gradients() -> None:
    # The plain real formulation, strided as the model's queries are (B, T, H, D -> B, H, T, D).
    x = torch.randn(3, 9, 4, 16).transpose(1, 2).requires_grad_()
    cos, sin = rotary_angles(torch.arange(9), 16, 10000.0)
    upstream = torch.randn(3, 4, 9, 16)

    ours = apply_rotary(x, cos, sin)
    (grad_ours,) = torch.autograd.grad(ours, x, upstream)
    even, odd = x[..., 0::2], x[..., 1::2]
    plain = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    (grad_plain,) = torch.autograd.grad(plain, x, upstream)

    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_plain, rtol=1e-6, atol=1e-6)


def test_rotated_query_key_products_depend_only_on_their_distance() -> None:
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(p: int, s: int) -> float:
        cq, sq = rotary_angles(torch.tensor([p]), 16, 10000.0)
        ck, sk = rotary_angles(torch.tensor([s]), 16, 10000.0)
        return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())

    assert score(5, 2) == pytest.approx(score(1003, 1000), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


# --- the block's parts --------------------------------------------------------------------


def test_swiglu_width_defaults_to_eight_thirds_rounded_up_and_can_be_set() -> None:
    assert LLAMA.replace(n_embd=384, n_head=6).hidden_size == 1024
    assert LLAMA.hidden_size == 128  # 8/3 * 32 = 85.3, rounded up to a multiple of 64
    assert LLAMA.replace(mlp_hidden=48).hidden_size == 48
    assert TINY.hidden_size == 4 * 32

    mlp = llama_block(GPT(LLAMA.replace(mlp_hidden=48)), 0).mlp
    assert (mlp.gate.weight.shape, mlp.up.weight.shape, mlp.c_proj.weight.shape) == (
        (48, 32),
        (48, 32),
        (32, 48),
    )
    x = torch.randn(2, 5, 32)
    expected = mlp.c_proj(torch.nn.functional.silu(mlp.gate(x)) * mlp.up(x))
    torch.testing.assert_close(mlp(x), expected)


def test_llama_parameters_have_no_biases_no_position_table_and_narrow_kv_with_gqa() -> None:
    config = LLAMA.replace(n_head=4, n_kv_head=2, qk_norm=True)
    shapes = {name: tuple(p.shape) for name, p in GPT(config).named_parameters()}

    assert not any(name.endswith("bias") for name in shapes)
    assert "transformer.wpe.weight" not in shapes
    assert shapes["transformer.h.0.attn.c_q.weight"] == (32, 32)
    assert shapes["transformer.h.0.attn.c_k.weight"] == (16, 32)  # 2 kv heads of 8
    assert shapes["transformer.h.0.attn.c_v.weight"] == (16, 32)
    assert shapes["transformer.h.0.attn.q_norm.weight"] == (8,)
    assert "lm_head.weight" not in shapes  # tied: named once, as transformer.wte


def test_an_untied_head_is_its_own_matrix_and_counts_once() -> None:
    tied, untied = GPT(LLAMA), GPT(LLAMA.replace(tie_embeddings=False))

    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert tied.lm_head.weight is tied.transformer.wte.weight
    extra = LLAMA.padded_vocab_size * LLAMA.n_embd
    assert untied.num_parameters(exclude_embeddings=False) == tied.num_parameters(False) + extra


def test_llama_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        LLAMA.replace(n_kv_head=3, n_head=2)
    with pytest.raises(ValueError, match="must be even"):
        LLAMA.replace(n_embd=6, n_head=2)
    with pytest.raises(ValueError, match="no biases"):
        LLAMA.replace(bias=True)


def test_a_llama_overfits_a_tiny_fixed_batch() -> None:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    model = GPT(LLAMA.replace(qk_norm=True)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx, targets = random_ids(LLAMA, 2, 16), random_ids(LLAMA, 2, 16, seed=2)
    first = float(model(idx, targets).detach())
    for _ in range(60):
        optimizer.zero_grad()
        model(idx, targets).backward()
        optimizer.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves `closure` unannotated
    assert float(model(idx, targets).detach()) < 0.1 * first


# --- the KV cache, within and past block_size ---------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_logits_equal_full_forward_logits_token_by_token_and_in_chunks(shape: str) -> None:
    config = SHAPES[shape]
    model = unit_scale(config)
    ids = random_ids(config, batch=2, length=config.block_size)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(2)
        pieces = [model.forward_cached(ids[:, :5], cache)]
        pieces += [model.forward_cached(ids[:, t : t + 1], cache) for t in range(5, 9)]
        pieces.append(model.forward_cached(ids[:, 9:], cache))

    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def sliding_window_logits(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """Logits of every position of `ids` (1, T) where each token attends to at most the last
    block_size tokens, at their absolute rotary positions: a reference written from the
    model's parts, without any cache."""
    config, trunk = model.config, model.transformer
    t, window = ids.size(1), config.block_size
    cos, sin = rotary_angles(torch.arange(t), config.head_dim, config.rope_base)
    rows, cols = torch.arange(t)[:, None], torch.arange(t)[None, :]
    allowed = (cols <= rows) & (cols > rows - window)
    x = trunk.wte(ids)
    for i in range(config.n_layer):
        block = llama_block(model, i)
        attn, h = block.attn, block.ln_1(x)
        q = attn.c_q(h).view(1, t, attn.n_head, attn.head_dim)
        k = attn.c_k(h).view(1, t, attn.n_kv_head, attn.head_dim)
        v = attn.c_v(h).view(1, t, attn.n_kv_head, attn.head_dim).transpose(1, 2)
        if attn.q_norm is not None and attn.k_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), cos, sin), apply_rotary(k.transpose(1, 2), cos, sin)
        groups = attn.n_head // attn.n_kv_head
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)
        y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        x = x + attn.c_proj(y.transpose(1, 2).reshape(1, t, config.n_embd))
        x = x + block.mlp(block.ln_2(x))
    logits: torch.Tensor = model.lm_head(trunk.ln_f(x))
    return logits


@pytest.mark.parametrize("shape", ["llama", "llama, QK-norm, 1 kv head, untied"])
def test_llama_generation_past_block_size_slides_its_cache_over_the_last_block(
    shape: str,
) -> None:
    # Past block_size the oldest cached keys and values are dropped, so every new token
    # attends to exactly the last block_size tokens at distances the model was trained on.
    # The kept keys were computed when their tokens were new, from their own windows: the
    # result is sliding-window attention over the whole sequence, not a recomputed window.
    config = SHAPES[shape]
    model = unit_scale(config)
    prompt = random_ids(config, batch=1, length=5)

    tokens = continue_prompt(model, prompt, settings(3 * config.block_size, temperature=0.0))

    sequence = torch.cat((prompt, tokens), dim=1)
    with torch.no_grad():
        reference = sliding_window_logits(model, sequence[:, :-1])
    greedy = reference[0, prompt.size(1) - 1 :, : config.vocab_size].argmax(-1)
    assert torch.equal(greedy, tokens[0])
    step = gpt_step(model)
    with torch.no_grad():
        step(sequence[:, :5])
        for end in range(6, sequence.size(1)):
            logits = step(sequence[:, end - 1 : end])
            expected = reference[0, end - 1, : config.vocab_size]  # the step masks padding
            torch.testing.assert_close(
                logits[0, : config.vocab_size], expected, rtol=1e-4, atol=1e-4
            )


def test_a_one_layer_llama_generates_past_block_size_as_if_recomputing_the_window() -> None:
    # With one layer the cached keys depend on their token and position only, so the
    # sliding cache equals recomputing the last block from scratch, token for token.
    model = unit_scale(LLAMA.replace(n_layer=1))
    prompt = random_ids(LLAMA, batch=1, length=5)
    greedy = settings(3 * LLAMA.block_size, temperature=0.0)

    cached = continue_prompt(model, prompt, greedy, use_cache=True)

    assert torch.equal(cached, continue_prompt(model, prompt, greedy, use_cache=False))


def test_a_gpt2_cache_refuses_positions_past_its_learned_table() -> None:
    model = unit_scale(TINY)
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        model.forward_cached(random_ids(TINY, 1, TINY.block_size), cache)
    cache.drop_oldest(4)
    with pytest.raises(ValueError, match="no learned embedding"):
        model.forward_cached(random_ids(TINY, 1, 1), cache)


# --- checkpoints from before the llama architecture ---------------------------------------

LLAMA_KEYS = ("arch", "rope_base", "mlp_hidden", "tie_embeddings", "qk_norm", "n_kv_head")


def test_model_args_without_the_llama_keys_are_refused_naming_the_file_and_train_fresh() -> None:
    old = {k: v for k, v in TINY.to_dict().items() if k not in LLAMA_KEYS}

    with pytest.raises(CheckpointError) as refused:
        GPTConfig.from_dict(old, source="out/ckpt_last.pt model_args")

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("out/ckpt_last.pt model_args is missing arch,")
    assert "`ml-playground train <experiment> --fresh`" in message


def test_model_args_with_only_some_of_the_llama_keys_are_a_damaged_checkpoint() -> None:
    partial = {k: v for k, v in LLAMA.to_dict().items() if k != "rope_base"}
    with pytest.raises(CheckpointError, match="missing rope_base"):
        GPTConfig.from_dict(partial)
