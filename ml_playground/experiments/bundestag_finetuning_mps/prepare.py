"""Prepare bundestag_finetuning_mps: speeches from .txt files or a speeches CSV.

Every .txt below [prepare] raw_dir is one speech; a CSV (raw_text_path, or any below
raw_dir) holds one speech per row. Records, tokenizer and meta.json land in dataset_dir.
"""

from __future__ import annotations

from ml_playground.experiments import PrepareContext, register


@register("bundestag_finetuning_mps")
def prepare(ctx: PrepareContext) -> None:
    # Imported here: discovery imports every prepare.py, and transformers loads for seconds.
    from ml_playground.finetune.dataset import prepare_speeches  # noqa: PLC0415

    prepare_speeches(ctx.config, frozenset({".txt", ".csv"}))
