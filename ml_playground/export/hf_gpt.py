"""A from-scratch GPT as a transformers model: the class, its config and its tensors.

`arch = "gpt2"` is transformers' `GPT2LMHeadModel`: the same LayerNorm, fused query/key/
value matmul and tanh GELU (`gelu_new`); its `Conv1D` layers store weights as (in, out),
so every matrix is transposed, and a model trained without biases gets zero biases
(GPT-2's layers always have them). `arch = "llama"` is `LlamaForCausalLM`; with QK-norm it
is `Qwen3ForCausalLM`, whose attention RMS-normalises each head's query and key after the
projection and before the rotation, exactly where `model/gpt.py` does.

Rotary embeddings: ours rotate adjacent pairs (x0, x1), (x2, x3), ... (model/gpt.py);
transformers' Llama and Qwen3 rotate the two halves of a head (x_i, x_{i+d/2}). Taking
each head's even rows first, then its odd rows, turns one layout into the other; the
query and key rows (and the QK-norm weights, which scale the same positions) are
permuted alike, so every attention score stays the same.

The padded vocabulary rows (model/config.py rounds up to 64) are dropped: the exported
embedding and head have exactly the tokenizer's ids, so transformers never samples an id
no tokenizer can decode. Tied embeddings stay tied: one tensor, `tie_word_embeddings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ml_playground.model.config import NORM_EPS, GPTConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class HFModel:
    """What the folder holds: the transformers class, its config and the weights."""

    architecture: str
    config: PretrainedConfig
    tensors: Tensors


def hf_model(
    state: Mapping[str, torch.Tensor], config: GPTConfig, *, vocab_size: int, eos_id: int | None
) -> HFModel:
    """The transformers form of the GPT `state` (a checkpoint's weights), cut to
    `vocab_size` ids (the tokenizer's)."""
    if vocab_size > config.vocab_size:
        raise ValueError(
            f"tokenizer has {vocab_size} tokens but the model only {config.vocab_size}"
        )
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    # The weights stay in the dtype they were trained in, and config.json says which.
    dtype = str(weights["transformer.wte.weight"].dtype).removeprefix("torch.")
    if config.arch == "gpt2":
        architecture = "GPT2LMHeadModel"
        hf_config = gpt2_config(config, vocab_size, eos_id)
        tensors = gpt2_tensors(weights, config, vocab_size)
    else:
        architecture = "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"
        hf_config = llama_config(config, vocab_size, eos_id)
        tensors = llama_tensors(weights, config, vocab_size)
    hf_config.dtype = dtype  # pyright: ignore[reportAttributeAccessIssue] - untyped library
    return HFModel(architecture, hf_config, tensors)


def gpt2_config(config: GPTConfig, vocab_size: int, eos_id: int | None) -> PretrainedConfig:
    from transformers import GPT2Config  # noqa: PLC0415 - heavy, export only

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.hidden_size,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=NORM_EPS,
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        architectures=["GPT2LMHeadModel"],
    )


def llama_config(config: GPTConfig, vocab_size: int, eos_id: int | None) -> PretrainedConfig:
    from transformers import LlamaConfig, Qwen3Config  # noqa: PLC0415 - heavy, export only

    # Any: transformers types each keyword differently, and these are checked there.
    shared: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }
    if config.qk_norm:
        return Qwen3Config(**shared, use_sliding_window=False, architectures=["Qwen3ForCausalLM"])
    return LlamaConfig(**shared, mlp_bias=False, architectures=["LlamaForCausalLM"])


def gpt2_tensors(weights: Tensors, config: GPTConfig, vocab_size: int) -> Tensors:
    def linear(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A Linear as GPT-2's Conv1D: the weight (in, out), a bias even when we had none."""
        weight = weights[f"{name}.weight"]
        bias = weights.get(f"{name}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        return weight.t().contiguous(), bias

    def norm(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        weight = weights[f"{name}.weight"]
        return weight, weights.get(f"{name}.bias", torch.zeros_like(weight))

    out: Tensors = {
        "transformer.wte.weight": weights["transformer.wte.weight"][:vocab_size].clone(),
        "transformer.wpe.weight": weights["transformer.wpe.weight"],
    }
    pairs: dict[str, Callable[[str], tuple[torch.Tensor, torch.Tensor]]] = {
        "ln_1": norm, "attn.c_attn": linear, "attn.c_proj": linear,
        "ln_2": norm, "mlp.c_fc": linear, "mlp.c_proj": linear,
    }  # fmt: skip
    for layer in range(config.n_layer):
        for part, convert in pairs.items():
            name = f"transformer.h.{layer}.{part}"
            out[f"{name}.weight"], out[f"{name}.bias"] = convert(name)
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = norm("transformer.ln_f")
    if not config.tie_embeddings:
        out["lm_head.weight"] = weights["lm_head.weight"][:vocab_size].clone()
    return out


def halves_order(head_dim: int) -> torch.Tensor:
    """Row order that turns adjacent rotary pairs into split halves: evens, then odds."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def by_halves(weight: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Permute the rows of each head of a query or key projection (heads*head_dim, in)."""
    rows = weight.view(heads, head_dim, -1)[:, halves_order(head_dim)]
    return rows.reshape(weight.shape).contiguous()


def llama_tensors(weights: Tensors, config: GPTConfig, vocab_size: int) -> Tensors:
    head_dim, order = config.head_dim, halves_order(config.head_dim)
    out: Tensors = {
        "model.embed_tokens.weight": weights["transformer.wte.weight"][:vocab_size].clone()
    }
    for layer in range(config.n_layer):
        ours, theirs = f"transformer.h.{layer}", f"model.layers.{layer}"
        out[f"{theirs}.input_layernorm.weight"] = weights[f"{ours}.ln_1.weight"]
        out[f"{theirs}.self_attn.q_proj.weight"] = by_halves(
            weights[f"{ours}.attn.c_q.weight"], config.n_head, head_dim
        )
        out[f"{theirs}.self_attn.k_proj.weight"] = by_halves(
            weights[f"{ours}.attn.c_k.weight"], config.kv_heads, head_dim
        )
        out[f"{theirs}.self_attn.v_proj.weight"] = weights[f"{ours}.attn.c_v.weight"]
        out[f"{theirs}.self_attn.o_proj.weight"] = weights[f"{ours}.attn.c_proj.weight"]
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                out[f"{theirs}.self_attn.{norm}.weight"] = weights[f"{ours}.attn.{norm}.weight"][
                    order
                ].contiguous()
        out[f"{theirs}.post_attention_layernorm.weight"] = weights[f"{ours}.ln_2.weight"]
        out[f"{theirs}.mlp.gate_proj.weight"] = weights[f"{ours}.mlp.gate.weight"]
        out[f"{theirs}.mlp.up_proj.weight"] = weights[f"{ours}.mlp.up.weight"]
        out[f"{theirs}.mlp.down_proj.weight"] = weights[f"{ours}.mlp.c_proj.weight"]
    out["model.norm.weight"] = weights["transformer.ln_f.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = weights["lm_head.weight"][:vocab_size].clone()
    return out
