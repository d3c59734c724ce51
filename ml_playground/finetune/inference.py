"""A fine-tuned model ready to generate: base + the adapters sampling should use.

The adapters are out_dir/adapters/best, else final, else last. Without any, sampling
falls back to the bare base model (and says so) unless sample.sample.require_adapters is
set, which makes their absence an error. Merging (hf_model.save_merged) loads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ml_playground.checkpoint import (
    ADAPTER_SAMPLING_ORDER,
    ADAPTERS_DIR,
    RUN_META,
    RunMeta,
    adapters_for_sampling,
)
from ml_playground.config import HFModelConfig
from ml_playground.data.dataset_folder import TOKENIZER_DIR
from ml_playground.errors import CheckpointError
from ml_playground.finetune.hub import ModelSource, Tokenizer, load_tokenizer
from ml_playground.finetune.model import (
    fit_embeddings,
    is_adapter_folder,
    load_adapters,
    load_base,
)


@dataclass(frozen=True)
class Trained:
    model: nn.Module
    tokenizer: Tokenizer
    weights: Path | None  # the adapters (or fine-tuned model) folder; None = bare base model
    meta: RunMeta | None  # None when no training run has written out_dir yet


def load_trained(
    out_dir: Path, hf: HFModelConfig, *, dtype: torch.dtype, require_adapters: bool
) -> Trained:
    """The model and tokenizer sampling and merging use, in eval mode on the CPU."""
    meta = RunMeta.read(out_dir) if (out_dir / RUN_META).is_file() else None
    if meta is not None and (meta.base_model, meta.revision) != (hf.model_name, hf.revision):
        raise CheckpointError(
            f"the adapters in {out_dir} were trained on {meta.base_model} but "
            f"train.hf_model.model_name is {hf.model_name}; fix the config or use another out_dir"
        )
    weights = adapters_for_sampling(out_dir)
    if weights is None and require_adapters:
        raise CheckpointError(
            f"no adapters in {out_dir / ADAPTERS_DIR} "
            f"(looked for {', '.join(ADAPTER_SAMPLING_ORDER)}) and "
            "sample.sample.require_adapters is true; train first with "
            "`ml-playground train <experiment>`"
        )
    source = ModelSource.from_config(hf)
    tokenizer_dir = out_dir / TOKENIZER_DIR
    tokenizer = load_tokenizer(
        ModelSource.local(tokenizer_dir) if tokenizer_dir.is_dir() else source
    )
    model: nn.Module
    if weights is not None and not is_adapter_folder(weights):
        # [train.peft] enabled = false: the folder is a whole fine-tuned model.
        model = load_base(hf, ModelSource.local(weights), dtype=dtype)
    else:
        base = load_base(hf, source, dtype=dtype)
        # Rows of added tokens come from the adapters, so new rows need no initialisation.
        fit_embeddings(base, len(tokenizer), init_new_rows=False)
        model = base if weights is None else load_adapters(base, weights, trainable=False)
    model.eval()
    return Trained(model=model, tokenizer=tokenizer, weights=weights, meta=meta)
