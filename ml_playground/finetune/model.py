"""The model being fine-tuned: a pretrained base, LoRA adapters on it, and merging them.

The base is loaded in the configured dtype, its embedding matrix grown when the tokenizer
gained tokens (structure tokens), and wrapped by peft: LoRA on the target projections,
plus trainable rows for the added tokens only (peft's trainable_token_indices), so new
tokens learn their embedding without saving or training the whole vocabulary matrix.
With [train.peft] enabled = false every weight trains instead and "adapters" are whole
model folders.

Like hub.py this is a boundary to untyped libraries (peft, transformers): models leave
it as `torch.nn.Module` or `PreTrainedModel`, and peft is imported where it is used, so
that errors found before any model loads are reported without waiting for it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ml_playground.config import GradientCheckpointing, HFModelConfig, PeftConfig, RuntimeConfig
from ml_playground.device import TORCH_DTYPES, free_memory_bytes, resolve_precision
from ml_playground.errors import CheckpointError, ConfigError
from ml_playground.finetune.hub import ModelSource, load_causal_lm, load_model_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The MLP projections of Llama, Qwen2, Gemma and Mistral style blocks.
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# Gemma is trained and validated with eager attention; sdpa changes its soft-capped logits.
EAGER_ATTENTION_FAMILIES = ("gemma",)
# peft (0.17+) asks transformers 5 for `is_gradient_checkpointing`, which transformers
# marks for removal; the warning is theirs to fix, not the user's.
PEFT_DEPRECATION = r".*is_gradient_checkpointing.*"
GIB = 1 << 30


def weights_dtype(hf: HFModelConfig, runtime: RuntimeConfig) -> torch.dtype:
    """The dtype the base weights are stored in: hf_model.dtype, or runtime.dtype for auto
    (resolved from the hardware when that is auto too)."""
    if hf.dtype != "auto":
        return TORCH_DTYPES[hf.dtype]
    if runtime.dtype != "auto":
        return TORCH_DTYPES[runtime.dtype]
    return resolve_precision(runtime.device, runtime.dtype).dtype


def attention_implementation(hf: HFModelConfig, source: ModelSource) -> str | None:
    """hf_model.attn_implementation, else eager for Gemma and transformers' choice otherwise."""
    if hf.attn_implementation is not None:
        return hf.attn_implementation
    model_type = load_model_config(source).model_type
    return "eager" if model_type.startswith(EAGER_ATTENTION_FAMILIES) else None


def load_base(hf: HFModelConfig, source: ModelSource, *, dtype: torch.dtype) -> PreTrainedModel:
    return load_causal_lm(
        source, dtype=dtype, attn_implementation=attention_implementation(hf, source)
    )


def fit_embeddings(model: PreTrainedModel, vocab_size: int, *, init_new_rows: bool) -> None:
    """Grow the embedding (and a tied output) matrix to hold `vocab_size` ids.

    Many models already have spare rows (Qwen2.5 pads its vocabulary), then nothing
    changes. `init_new_rows` initialises new rows from the distribution of the existing
    ones; when the rows come from saved adapters anyway that work is skipped.
    """
    rows = _embedding_rows(model)
    if vocab_size > rows:
        model.resize_token_embeddings(vocab_size, mean_resizing=init_new_rows)  # pyright: ignore[reportUnknownMemberType] - untyped library


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    # Non-reentrant checkpointing needs no inputs that require grad, so frozen embeddings
    # under LoRA work without peft's enable_input_require_grads workaround; and it is the
    # variant DDP supports (the reentrant one recomputes in a nested backward pass that
    # DDP's gradient hooks do not expect).
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)  # pyright: ignore[reportUnknownMemberType, reportAttributeAccessIssue] - untyped library
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)  # type: ignore[no-untyped-call]  # pyright: ignore[reportUnknownMemberType] - untyped library


# Activations may take this share of the memory free once the weights are loaded before
# checkpointing turns on: the rest is headroom for gradients, the optimizer, the loss's
# chunks and whatever else the machine runs.
ACTIVATION_SHARE = 0.5


def choose_gradient_checkpointing(
    setting: GradientCheckpointing,
    model: PreTrainedModel,
    micro_batch_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[bool, str]:
    """Whether to recompute activations in backward, and why, in a clause for the start
    line. `auto` turns it on only when the estimated activations of a micro-batch would
    not fit in ACTIVATION_SHARE of the memory free now."""
    if setting != "auto":
        return setting, "train.hf_model.gradient_checkpointing"
    needed = activation_bytes(model.config, micro_batch_tokens, dtype)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType] - untyped library
    free = free_memory_bytes(device)
    if free is None:
        return True, f"auto: ~{needed / GIB:.1f} GiB of activations, free memory unknown"
    fits = needed <= ACTIVATION_SHARE * free
    return (
        not fits,
        f"auto: ~{needed / GIB:.1f} GiB of activations "
        f"{'fit' if fits else 'would not fit'} in half of the {free / GIB:.1f} GiB free",
    )


def activation_bytes(config: object, tokens: int, dtype: torch.dtype) -> int:
    """An estimate of what a decoder's forward pass keeps for backward, for `tokens` tokens.

    Per layer and token a Llama-style block keeps about 12 hidden-sized tensors (norm
    inputs and outputs, q/k/v/o, attention output, residuals), 4 of the MLP width (gate,
    up, their activation and product) in the compute dtype, and its RMSNorms' float32
    copies (4 hidden-sized); eager attention adds its (heads x T x T) scores and
    probabilities. Measured on a Qwen2-shaped model it is within 30% of the growth of peak
    memory; it only has to tell 1 GiB from 10.
    """
    hidden = int(getattr(config, "hidden_size", 0))
    width = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    layers = int(getattr(config, "num_hidden_layers", 0))
    per_token = dtype.itemsize * (12 * hidden + 4 * width) + 4 * 4 * hidden
    attention = 0
    if getattr(config, "_attn_implementation", None) == "eager":
        heads = int(getattr(config, "num_attention_heads", 0))
        attention = heads * tokens * 512 * (dtype.itemsize + 4)  # up to 512 positions a row
    return layers * (tokens * per_token + attention)


def keep_adapter_inputs_in(model: nn.Module) -> None:
    """Let LoRA layers pass their input to the adapters in its own dtype.

    peft copies an adapter's input to the adapters' dtype (float32) on every call; under
    autocast the matmul copies it back, so with a bfloat16 base and bfloat16 autocast both
    copies are pure cost (and the dropout then runs over float32). Only for runs under
    an autocast of the base's dtype: without one, float32 adapters need float32 inputs.
    """
    for module in model.modules():
        if hasattr(module, "lora_A"):
            setattr(module, "cast_input_dtype_enabled", False)  # noqa: B010 - peft's flag, untyped


def lora_targets(model: nn.Module, peft: PeftConfig, model_name: str) -> list[str]:
    """target_modules (+ the MLP projections with extend_mlp_targets) that the model has."""
    present = {_leaf(name) for name, module in _modules(model) if isinstance(module, nn.Linear)}
    targets = list(dict.fromkeys(peft.target_modules))
    missing = [target for target in targets if target not in present]
    if missing:
        raise ConfigError(
            f"train.peft.target_modules names {', '.join(missing)}, which {model_name} does not "
            f"have; its linear layers are {', '.join(sorted(present))}"
        )
    if peft.extend_mlp_targets:
        targets += [name for name in MLP_PROJECTIONS if name in present and name not in targets]
    return targets


def apply_lora(
    model: PreTrainedModel, peft: PeftConfig, model_name: str, new_token_ids: Sequence[int]
) -> nn.Module:
    """Wrap `model` with fresh LoRA adapters; added tokens get trainable embedding rows."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 - see module docstring

    config = LoraConfig(
        r=peft.r,
        lora_alpha=peft.lora_alpha,
        lora_dropout=peft.lora_dropout,
        bias=peft.bias,
        target_modules=lora_targets(model, peft, model_name),
        task_type="CAUSAL_LM",
        trainable_token_indices=_token_rows(model, new_token_ids) or None,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        wrapped = get_peft_model(model, config)
    return cast(nn.Module, wrapped)


def load_adapters(model: PreTrainedModel, folder: Path, *, trainable: bool) -> nn.Module:
    """`model` with the adapters saved in `folder` (trainable to resume, else frozen)."""
    from peft import PeftModel  # noqa: PLC0415 - see module docstring

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
            wrapped = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)  # pyright: ignore[reportUnknownMemberType] - untyped library
    except Exception as exc:  # peft, json and safetensors raise many types for damaged files
        raise _damaged(folder, exc) from exc
    return cast(nn.Module, wrapped)


def read_adapter_config(folder: Path) -> dict[str, object]:
    """The adapters' adapter_config.json, after a cheap read of what loading them will
    read: run before the base model loads for seconds, so a damaged folder is reported at
    once (and alone)."""
    from safetensors import safe_open  # noqa: PLC0415 - see module docstring

    try:
        config: object = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("adapter_config.json holds no JSON object")
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as weights:  # pyright: ignore[reportUnknownVariableType] - untyped library
            weights.keys()  # pyright: ignore[reportUnknownMemberType] - untyped library
    except Exception as exc:  # json, OSError and safetensors' own error types
        raise _damaged(folder, exc) from exc
    return cast(dict[str, object], config)


def _damaged(folder: Path, exc: BaseException) -> CheckpointError:
    problem = (str(exc).strip().splitlines() or [""])[0][:160]
    return CheckpointError(
        f"the adapters in {folder} cannot be loaded ({type(exc).__name__}: {problem}); "
        "the folder is damaged: restore a backup or delete it"
    )


def is_adapter_folder(folder: Path) -> bool:
    """LoRA adapters, as opposed to a whole fine-tuned model (peft disabled)."""
    return (folder / ADAPTER_CONFIG).is_file()


def save_weights(model: nn.Module, folder: Path) -> None:
    """The trained weights: adapters (without the embedding matrix) or the whole model."""
    from peft import PeftModel  # noqa: PLC0415 - see module docstring

    if isinstance(model, PeftModel):
        # The added tokens' rows are saved by their token adapter; the full (resized)
        # embedding matrix is the base model's plus those rows, so it is not saved.
        model.save_pretrained(str(folder), save_embedding_layers=False)
    else:
        cast("PreTrainedModel", model).save_pretrained(str(folder))  # pyright: ignore[reportUnknownMemberType] - untyped library


def merge_adapters(model: nn.Module) -> PreTrainedModel:
    """The base with the adapters folded into its weights (a plain transformers model)."""
    from peft import PeftModel  # noqa: PLC0415 - see module docstring

    if isinstance(model, PeftModel):
        merged: object = model.merge_and_unload()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - untyped library
        return cast("PreTrainedModel", merged)
    return cast("PreTrainedModel", model)


def without_adapters(model: nn.Module) -> Callable[[], AbstractContextManager[object]] | None:
    """A context manager factory within which `model` runs as its base alone (peft's
    disable_adapter: LoRA and the added tokens' rows switched off, nothing unloaded);
    None for a model without adapters (a bare base, or a fully fine-tuned one)."""
    from peft import PeftModel  # noqa: PLC0415 - see module docstring

    if not isinstance(model, PeftModel):
        return None
    disable: Callable[[], AbstractContextManager[object]] = model.disable_adapter  # pyright: ignore[reportUnknownMemberType] - untyped library
    return disable


def _embedding_rows(model: PreTrainedModel) -> int:
    embeddings = cast(nn.Embedding, model.get_input_embeddings())  # pyright: ignore[reportUnknownMemberType] - untyped library
    return int(embeddings.weight.shape[0])


def _token_rows(model: PreTrainedModel, token_ids: Sequence[int]) -> dict[str, list[int]]:
    """peft's trainable_token_indices: the input embedding, and an untied output layer."""
    if not token_ids:
        return {}
    names = {id(module): name for name, module in _modules(model)}
    embeddings: nn.Module = model.get_input_embeddings()  # pyright: ignore[reportUnknownMemberType] - untyped library
    output = cast(nn.Module | None, model.get_output_embeddings())  # type: ignore[no-untyped-call]  # pyright: ignore[reportUnknownMemberType] - untyped library
    rows = {_leaf(names[id(embeddings)]): list(token_ids)}
    tied = output is not None and output.weight is embeddings.weight
    if output is not None and not tied:
        rows[_leaf(names[id(output)])] = list(token_ids)
    return rows


def _modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """named_modules, typed (transformers' models confuse the checker's inference)."""
    return list(cast(Iterator[tuple[str, nn.Module]], model.named_modules()))


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]
