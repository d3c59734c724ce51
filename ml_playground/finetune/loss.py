"""The next-token loss of a Hugging Face model, from its last hidden states.

The plain way, `F.cross_entropy(model(x).logits.float(), y)`, writes every position's
logits over the whole vocabulary (4 x 256 tokens x Qwen2's 151,936 ids is 155M values),
converts them to float32, and writes a gradient of the same size; on a CPU that is a
tenth of a LoRA step. Here the model runs with its output layer passed through, so it
returns the final hidden states, and the loss multiplies them by the output matrix in
chunks (`model/loss.py`, the from-scratch GPT's loss too), only at the positions that are
targets: chat records with masked prompts never pay for their prompt's logits.

The call still goes through the model as trained (DistributedDataParallel included, whose
gradient hooks need its own forward), so the head is swapped for the duration of one
forward pass rather than the decoder being called directly.

Exactness: the fast path computes what the plain one does for causal LMs whose logits are
`lm_head(hidden)`, optionally soft-capped (Gemma 2's `final_logit_softcapping`): Llama,
Mistral, Qwen2/2.5/3, Gemma 1/2/3 text models. Rows added for structure tokens (peft's
trainable tokens on a tied or an untied head) take part as replaced rows that train. Any
other head (a bias, a LoRA adapter on lm_head, a logit scale, another architecture) falls
back to the plain path, which the start of training says once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the conventional name

from ml_playground.data.batches import IGNORE_INDEX
from ml_playground.finetune.dropout import SharedDropoutState, shared_dropout_state
from ml_playground.model.loss import ReplacedRows, vocab_cross_entropy

# Model types whose causal-LM forward ends in `logits = lm_head(hidden)` (then, for the
# Gemma family, the optional soft cap that config.final_logit_softcapping sets).
NextTokenLoss = Callable[[Any, Tensor, Tensor], Tensor]
"""(model as called, inputs, targets) -> mean loss: train/loop.py's Loss for this backend."""

HIDDEN_STATE_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}
)


def plain_next_token_loss(model: Any, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of predicting y from x over the targets that count (IGNORE_INDEX
    marks prompt tokens of chat records), from full logits in float32: the reference the
    fast path is tested against, and its fallback."""
    logits: Tensor = model(input_ids=x, use_cache=False).logits
    total = F.cross_entropy(
        logits.float().view(-1, logits.size(-1)),
        y.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    # A batch of prompt tokens only has no target: its loss is 0, where the mean is 0/0.
    return total / (y != IGNORE_INDEX).sum().clamp(min=1)


class _PassThrough(nn.Module):
    """Stands in for the output layer: the model returns its final hidden states."""

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden


@dataclass(frozen=True)
class _Head:
    """Where a causal LM keeps its output layer, and what that layer computes."""

    causal_lm: nn.Module
    attribute: str
    layer: nn.Module  # the original: nn.Linear, or peft's trainable-tokens wrapper of one

    def weight(self) -> tuple[Tensor, ReplacedRows | None]:
        """The stored output matrix, and the rows trainable tokens replace (if active)."""
        token_layer: Any = getattr(self.layer, "token_adapter", None)
        if token_layer is None:
            return cast(nn.Linear, self.layer).weight, None
        base = cast(nn.Linear, token_layer.base_layer)
        active: list[str] = list(token_layer.active_adapters)
        if token_layer.disable_adapters or token_layer.merged or not active:
            return base.weight, None
        (adapter,) = active  # HiddenStateLoss.fits refused several
        indices = torch.as_tensor(token_layer.token_indices[adapter], device=base.weight.device)
        values = cast(Tensor, token_layer.trainable_tokens_delta[adapter])
        return base.weight, ReplacedRows(indices, values)

    @contextlib.contextmanager
    def passed_through(self) -> Generator[None]:
        """The model returns hidden states; a soft cap is left for the loss to apply."""
        config: Any = getattr(self.causal_lm, "config", None)
        softcap = getattr(config, "final_logit_softcapping", None)
        setattr(self.causal_lm, self.attribute, _PassThrough())
        if softcap is not None:
            config.final_logit_softcapping = None
        try:
            yield
        finally:
            setattr(self.causal_lm, self.attribute, self.layer)
            if softcap is not None:
                config.final_logit_softcapping = softcap


class HiddenStateLoss:
    """The next-token loss from hidden states and the output matrix (see module docstring),
    with the LoRA dropout masks of one forward and backward pass drawn once."""

    def __init__(self, head: _Head, softcap: float | None, dropout: SharedDropoutState | None):
        self._head = head
        self._softcap = softcap
        self._dropout = dropout

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> Tensor:
        if self._dropout is not None:
            self._dropout.next_pass()
        with self._head.passed_through():
            hidden: Tensor = model(input_ids=x, use_cache=False).logits
        targets = y.reshape(-1)
        counted = targets != IGNORE_INDEX
        # One host sync: the count of targets sizes the selection.
        hidden, targets = hidden.reshape(-1, hidden.size(-1))[counted], targets[counted]
        if targets.numel() == 0:
            return hidden.sum() * 0.0  # no target: loss 0 (and no gradient), as the plain path
        weight, replaced = self._head.weight()
        return vocab_cross_entropy(
            hidden, weight, targets, softcap=self._softcap, replaced=replaced
        )


def next_token_loss_for(model: nn.Module) -> tuple[NextTokenLoss, str | None]:
    """The loss a training run of `model` uses: the hidden-state loss where it is exact,
    else the plain one and the reason, for the run to say once."""
    causal_lm = _causal_lm(model)
    config: Any = getattr(causal_lm, "config", None)
    model_type = str(getattr(config, "model_type", "?"))
    if model_type not in HIDDEN_STATE_MODEL_TYPES:
        return plain_next_token_loss, f"model type {model_type} is not one the fast loss knows"
    head = _find_head(causal_lm)
    if isinstance(head, str):
        return plain_next_token_loss, head
    softcap = getattr(config, "final_logit_softcapping", None)
    return HiddenStateLoss(head, softcap, shared_dropout_state(model)), None


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers injected in place)."""
    get_base = getattr(model, "get_base_model", None)
    return cast(nn.Module, get_base()) if callable(get_base) else model


def _find_head(causal_lm: nn.Module) -> _Head | str:
    """The output layer and its attribute, or why the fast path cannot stand in for it."""
    get_output = getattr(causal_lm, "get_output_embeddings", None)
    layer = cast(nn.Module | None, get_output() if callable(get_output) else None)
    if layer is None:
        return "the model has no output layer"
    attribute = next((name for name, child in causal_lm.named_children() if child is layer), None)
    if attribute is None:
        return "the output layer is not a direct child of the model"
    token_layer: Any = getattr(layer, "token_adapter", None)
    linear: nn.Module = layer if token_layer is None else token_layer.base_layer
    if type(linear) is not nn.Linear or getattr(linear, "bias", None) is not None:
        return f"the output layer is a {type(linear).__name__} (LoRA on lm_head, or a bias)"
    if token_layer is not None and len(list(token_layer.active_adapters)) > 1:
        return "several trainable-token adapters are active"
    return _Head(causal_lm, attribute, layer)
