"""The fine-tuning loss from hidden states must equal the plain full-logits loss.

Tiny real transformers models (Qwen2 tied, Llama untied, Gemma 3 with and without a
final-logit soft cap) wrapped by peft as training wraps them, with LoRA B drawn non-zero so
every adapter gradient is non-trivial; raw-text targets and chat-style masked prompts;
with and without trainable rows for added structure tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import torch
from torch import nn

from ml_playground.config import PeftConfig
from ml_playground.data.batches import IGNORE_INDEX
from ml_playground.finetune.dropout import SharedDropout, install_shared_dropout
from ml_playground.finetune.loss import HiddenStateLoss, next_token_loss_for, plain_next_token_loss
from ml_playground.finetune.model import apply_lora

pytestmark = pytest.mark.unit

Family = Literal["qwen2", "llama", "gemma3", "gemma3-softcap"]
VOCAB, HIDDEN = 96, 32
ADDED = [90, 91, 92]  # rows that stand for structure tokens added at prepare time


def tiny_model(family: Family) -> Any:
    from transformers import (  # noqa: PLC0415 - heavy
        AutoModelForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        Qwen2Config,
    )

    shape: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    if family == "qwen2":
        config: Any = Qwen2Config(tie_word_embeddings=True, **shape)
    elif family == "llama":
        config = LlamaConfig(tie_word_embeddings=False, **shape)
    else:
        softcap = 3.0 if family == "gemma3-softcap" else None
        config = Gemma3TextConfig(
            head_dim=8, sliding_window=8, final_logit_softcapping=softcap, **shape
        )
        config._attn_implementation = "eager"
    torch.default_generator.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - untyped library


def wrapped(family: Family, *, added: bool, dropout: float = 0.0) -> nn.Module:
    peft = PeftConfig(r=4, lora_alpha=8, lora_dropout=dropout, extend_mlp_targets=True)
    model = apply_lora(tiny_model(family), peft, family, ADDED if added else [])
    generator = torch.Generator().manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "trainable_tokens_delta" in name:
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def batch(*, masked_prompts: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(VOCAB, (3, 17), generator=generator)
    ids[:, 5] = ADDED[0]
    ids[1, 9] = ADDED[2]
    x, y = ids[:, :-1], ids[:, 1:].clone()
    if masked_prompts:
        y[:, :7] = IGNORE_INDEX  # the prompt's tokens are not targets
        y[2] = IGNORE_INDEX
    return x, y


def loss_and_grads(
    model: nn.Module, loss: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    value = loss(model, x, y)
    torch.autograd.backward(value)
    grads = {
        name: cast(torch.Tensor, p.grad).clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return value.item(), grads


@pytest.mark.parametrize("family", ["qwen2", "llama", "gemma3", "gemma3-softcap"])
@pytest.mark.parametrize("masked_prompts", [False, True])
@pytest.mark.parametrize("added", [False, True])
def test_hidden_state_loss_equals_the_full_logits_loss_with_its_gradients(
    family: Family, masked_prompts: bool, added: bool
) -> None:
    model = wrapped(family, added=added)
    fast, plain_because = next_token_loss_for(model)
    assert isinstance(fast, HiddenStateLoss), plain_because
    x, y = batch(masked_prompts=masked_prompts)

    expected, expected_grads = loss_and_grads(model, plain_next_token_loss, x, y)
    got, got_grads = loss_and_grads(model, fast, x, y)

    assert got == pytest.approx(expected, rel=1e-5)
    assert got_grads.keys() == expected_grads.keys()
    assert any("trainable_tokens" in name for name in got_grads) == added
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name  # every trainable tensor is exercised
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # The head is the model's own again: a plain call gives logits over the vocabulary.
    assert model(input_ids=x).logits.shape[-1] == VOCAB


def test_under_bfloat16_autocast_the_fast_loss_stays_within_bfloat16_rounding() -> None:
    model = wrapped("qwen2", added=True)
    fast, _ = next_token_loss_for(model)
    x, y = batch(masked_prompts=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_next_token_loss(model, x, y).item()
        got = fast(model, x, y).item()
    assert got == pytest.approx(expected, rel=1e-2)


def test_a_batch_without_targets_has_loss_zero_like_the_plain_path() -> None:
    model = wrapped("llama", added=False)
    fast, _ = next_token_loss_for(model)
    x, _ = batch(masked_prompts=False)
    y = torch.full_like(x, IGNORE_INDEX)
    assert fast(model, x, y).item() == 0.0 == plain_next_token_loss(model, x, y).item()


def test_a_lora_adapter_on_the_output_layer_falls_back_to_the_plain_loss() -> None:
    peft = PeftConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "lm_head"])
    model = apply_lora(tiny_model("llama"), peft, "llama", [])
    loss, because = next_token_loss_for(model)
    assert loss is plain_next_token_loss
    assert because is not None and "output layer" in because


def test_adapters_reading_one_input_share_one_mask_drawn_once_per_pass() -> None:
    model = wrapped("qwen2", added=False, dropout=0.3)
    state = install_shared_dropout(model)
    assert state is not None
    fast, _ = next_token_loss_for(model)
    model.train()
    drawn: list[torch.Size] = []
    real_draw = torch.Tensor.random_

    def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        drawn.append(tensor.shape)
        return real_draw(tensor, *args, **kwargs)

    x, y = batch(masked_prompts=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "random_", counting)
        loss = fast(model, x, y)
    # Per layer: q/k/v share the normed input, gate/up the MLP's, o and down read their own.
    assert len(drawn) == 2 * 4
    attention = model.get_submodule("base_model.model.model.layers.0.self_attn")
    masks = [
        cast(SharedDropout, attention.get_submodule(f"{name}.lora_dropout.default")).mask
        for name in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    assert masks[0] is masks[1] is masks[2] and masks[3] is not masks[0]
    torch.autograd.backward(loss)


def test_with_checkpointing_the_recompute_reuses_the_masks_and_gradients_match() -> None:
    from ml_playground.finetune.model import enable_gradient_checkpointing  # noqa: PLC0415

    def grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        base = tiny_model("qwen2")
        if checkpointing:
            enable_gradient_checkpointing(base)
        peft = PeftConfig(r=4, lora_dropout=0.3)
        model = apply_lora(base, peft, "qwen2", [])
        install_shared_dropout(model)
        model.train()
        fast, _ = next_token_loss_for(model)
        x, y = batch(masked_prompts=False)
        torch.default_generator.manual_seed(7)
        loss = fast(model, x, y)
        drawn: list[int] = []
        real_draw = torch.Tensor.random_

        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            drawn.append(tensor.numel())
            return real_draw(tensor, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.Tensor, "random_", counting)
            torch.autograd.backward(loss)
        grads = {
            name: cast(torch.Tensor, p.grad).clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        return grads, len(drawn)

    (plain, _), (checkpointed, redrawn) = grads(False), grads(True)
    assert redrawn == 0  # the recompute pass took the masks its forward pass drew
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_auto_stays_off_when_the_activations_fit_and_says_why() -> None:
    from ml_playground.finetune.model import choose_gradient_checkpointing  # noqa: PLC0415

    model = tiny_model("qwen2")
    on, why = choose_gradient_checkpointing("auto", model, 1024, torch.device("cpu"), torch.float32)
    assert not on and why.startswith("auto: ~") and "fit in half of the" in why
    assert choose_gradient_checkpointing(True, model, 1024, torch.device("cpu"), torch.float32)[0]


def test_checkpointing_auto_turns_on_when_the_activations_would_not_fit() -> None:
    from ml_playground.finetune.model import activation_bytes, choose_gradient_checkpointing  # noqa: PLC0415

    model = tiny_model("llama")
    tokens = 1 << 28  # about 0.9 TiB of activations for even this tiny model
    assert activation_bytes(model.config, tokens, torch.bfloat16) > 1 << 39
    on, why = choose_gradient_checkpointing(
        "auto", model, tokens, torch.device("cpu"), torch.bfloat16
    )
    assert on and "would not fit" in why


def test_free_memory_is_read_from_the_kernels_mem_available(tmp_path: Path) -> None:
    from ml_playground.device import free_memory_bytes  # noqa: PLC0415

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:   2048 kB\n", encoding="ascii")
    assert free_memory_bytes(torch.device("cpu"), meminfo) == 2048 * 1024
