"""Prepare bundestag_finetuning_mps: speeches from .txt files or a speeches CSV.

Every .txt below [prepare] raw_dir is one speech; a CSV (raw_text_path, or any below
raw_dir) holds one speech per row. Records, tokenizer and meta.json land in dataset_dir.
"""

from __future__ import annotations

from ml_playground.experiments import PrepareContext, register


@register("bundestag_finetuning_mps")
def prepare(ctx: PrepareContext) -> None:
    # Imported here: discovery imports every prepare.py, and transformers loads for seconds.
    from ml_playground.data.records import prepare_speeches, require_hf_model  # noqa: PLC0415
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415

    hf = require_hf_model(ctx.config)
    prepare_speeches(ctx.config, frozenset({".txt", ".csv"}), tokenizer_loader(hf), force=ctx.force)
