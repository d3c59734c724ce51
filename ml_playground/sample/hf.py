"""A fine-tuned model ready to generate: base + the adapters sampling should use.

The adapters are out_dir/adapters/best, else final, else last. Without any, sampling
falls back to the bare base model (and says so) unless sample.sample.require_adapters is
set, which makes their absence an error. Merging (hf_model.save_merged) loads the same way.

As a sampling backend (`load_hf`) the model decodes with transformers'
`past_key_values`, stops at the end-of-sequence ids, the run's stop tokens and the chat
template's end of turn, and opens prompts the way the run's records opened (both from
out_dir/meta.json). The chat template is the one the run trained with (saved in
out_dir/tokenizer), else `[prepare] chat_template`, else the base model's; `chat` renders
conversations with it. When the records had structure tokens, each sample gets the
speech quality report beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from ml_playground import run_folder
from ml_playground.checkpoint import verify_adapters
from ml_playground.config import ExperimentConfig, HFModelConfig
from ml_playground.data.chat_records import configured_template
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.device import Precision, resolve_precision
from ml_playground.errors import CheckpointError
from ml_playground.finetune.hub import ModelSource, Tokenizer, load_tokenizer
from ml_playground.finetune.model import (
    fit_embeddings,
    is_adapter_folder,
    load_adapters,
    load_base,
    read_adapter_config,
    weights_dtype,
    without_adapters,
)
from ml_playground.model.vocab import mask_padded
from ml_playground.run_folder import HFRunMeta
from ml_playground.sample.backend import (
    Analyse,
    Analysis,
    Forward,
    LoadedModel,
    Message,
    RenderChat,
    Scoring,
)
from ml_playground.sample.chat_prompt import end_of_turn_ids, generation_prompt
from ml_playground.sample.generate import Step
from ml_playground.sample.speech_quality import analyse


@dataclass(frozen=True)
class Trained:
    model: nn.Module
    tokenizer: Tokenizer
    weights: Path | None  # the adapters (or fine-tuned model) folder; None = bare base model
    meta: HFRunMeta | None  # None when no training run has written out_dir yet


def load_trained(
    out_dir: Path, hf: HFModelConfig, *, dtype: torch.dtype, require_adapters: bool
) -> Trained:
    """The model and tokenizer sampling and merging use, in eval mode on the CPU."""
    meta = run_folder.read_run_meta_of(out_dir, HFRunMeta)
    if meta is not None:
        meta.check_base(out_dir, hf, CheckpointError)
    weights = run_folder.adapters_for_sampling(out_dir)
    if weights is not None:
        verify_adapters(weights)
    if weights is None and require_adapters:
        raise CheckpointError(
            f"no adapters in {run_folder.adapters_root(out_dir)} "
            f"(looked for {', '.join(run_folder.SAMPLING_ORDER)}) and "
            "sample.sample.require_adapters is true; train first with "
            "`ml-playground train <experiment>`"
        )
    source = ModelSource.from_config(hf)
    tokenizer_dir = run_folder.tokenizer_dir(out_dir)
    tokenizer = load_tokenizer(
        ModelSource.local(tokenizer_dir) if tokenizer_dir.is_dir() else source
    )
    model: nn.Module
    if weights is not None and not is_adapter_folder(weights):
        # [train.peft] enabled = false: the folder is a whole fine-tuned model.
        model = load_base(hf, ModelSource.local(weights), dtype=dtype)
    else:
        if weights is not None:
            read_adapter_config(weights)
        base = load_base(hf, source, dtype=dtype)
        # Rows of added tokens come from the adapters, so new rows need no initialisation.
        fit_embeddings(base, len(tokenizer), init_new_rows=False)
        model = base if weights is None else load_adapters(base, weights, trainable=False)
    model.eval()
    return Trained(model=model, tokenizer=tokenizer, weights=weights, meta=meta)


def load_hf(config: ExperimentConfig) -> LoadedModel:
    """The trained model of config's out_dir as a sampling backend."""
    hf = config.train.hf_model
    assert hf is not None  # the pipeline only sends configs with [train.hf_model] here
    runtime, settings = config.sample.runtime, config.sample.sample
    precision = resolve_precision(runtime.device, runtime.dtype)
    trained = load_trained(
        runtime.out_dir,
        hf,
        dtype=weights_dtype(hf, runtime),
        require_adapters=settings.require_adapters,
    )
    trained.model.to(precision.device)
    if trained.weights is None:
        description = f"no adapters in {runtime.out_dir}: sampling the base model {hf.model_name}"
    else:
        description = f"sampling from {hf.model_name} + {trained.weights}"
    tokenizer, meta = trained.tokenizer, trained.meta
    chat = _with_chat_template(tokenizer, config)
    bos = tokenizer.bos_token_id
    speeches = meta is not None and bool(meta.structure_tokens)
    return LoadedModel(
        description=description,
        device=precision.device,
        new_step=lambda: hf_step(trained.model, precision, vocab_size=len(tokenizer)),
        encode=lambda text: tokenizer.encode(text, add_special_tokens=True),
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        first_id=tokenizer.eos_token_id if bos is None else bos,
        stop_ids=_stop_ids(trained) | end_of_turn_ids(chat),
        record_opening=meta.record_opening if meta is not None else "",
        analyse=_speech_quality(tokenizer) if speeches else None,
        context_size=_context_size(trained.model),
        render_chat=_chat_renderer(chat) if chat.chat_template else None,
        scoring=Scoring(
            forward=hf_forward(trained.model, precision, vocab_size=len(tokenizer)),
            context=config.train.block_size,
            vocab_size=len(tokenizer),
            weights=trained.weights,
            precision=precision,
            base=without_adapters(trained.model),
        ),
    )


def hf_forward(model: nn.Module, precision: Precision, *, vocab_size: int) -> Forward:
    """Logits of every position of a batch of a transformers model, without a cache."""

    def forward(ids: Tensor) -> Tensor:
        with precision.autocast():
            output = model(input_ids=ids.to(precision.device), use_cache=False)
        logits: Tensor = output.logits
        return mask_padded(logits, vocab_size)

    return forward


def _with_chat_template(tokenizer: Tokenizer, config: ExperimentConfig) -> ChatTokenizer:
    """The tokenizer with the chat template the run trained with: the one saved with the
    run's tokenizer, else `[prepare] chat_template` over the base model's, as prepare does."""
    chat = cast(ChatTokenizer, tokenizer)
    saved = run_folder.tokenizer_dir(config.sample.runtime.out_dir)
    trained_with = saved.is_dir() and chat.chat_template
    if not trained_with and config.prepare.chat_template is not None:
        chat.chat_template = configured_template(config.prepare.chat_template)
    return chat


def _chat_renderer(tokenizer: ChatTokenizer) -> RenderChat:
    def render(conversation: Sequence[Message]) -> list[int]:
        return generation_prompt(tokenizer, conversation)

    return render


def _context_size(model: nn.Module) -> int | None:
    """The positions the model was built for (PEFT's wrapper forwards `config` to the base)."""
    size: object = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return size if isinstance(size, int) and size > 0 else None


def hf_step(model: nn.Module, precision: Precision, *, vocab_size: int) -> Step:
    """Next-token logits of a transformers model, with its `past_key_values` as the cache."""
    past: object = None

    def step(ids: Tensor) -> Tensor:
        nonlocal past
        with precision.autocast():
            output = model(input_ids=ids.to(precision.device), past_key_values=past, use_cache=True)
        past = output.past_key_values
        logits: Tensor = output.logits[:, -1, :]
        return mask_padded(logits, vocab_size)

    return step


def _stop_ids(trained: Trained) -> frozenset[int]:
    """EOS of the tokenizer and of the model's generation config, and the run's stop tokens."""
    ids: set[int] = set()
    if trained.tokenizer.eos_token_id is not None:
        ids.add(trained.tokenizer.eos_token_id)
    generation_config: object = getattr(trained.model, "generation_config", None)
    configured: object = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(token for token in configured if isinstance(token, int))  # pyright: ignore[reportUnknownVariableType] - list from JSON
    if trained.meta is not None and trained.meta.stop_tokens:
        ids.update(trained.tokenizer.convert_tokens_to_ids(list(trained.meta.stop_tokens)))
    return frozenset(ids)


def _speech_quality(tokenizer: Tokenizer) -> Analyse:
    def speech_quality(text: str, new_ids: Sequence[int], stopped: bool) -> Analysis:
        # Special tokens stay in: a structure token in mid-speech is worth reporting.
        continuation = tokenizer.decode(new_ids, skip_special_tokens=False)
        quality = analyse(text, continuation, ended_at_eos=stopped)
        return Analysis(quality.to_json(), f"{len(quality.anomalies)} anomalies in the .json")

    return speech_quality
