"""Prepare speakger: SpeakGer (or Open Discourse) speeches CSVs with member metadata.

Every speeches CSV below [prepare] raw_dir (or the one raw_text_path names) is read;
all_mps_meta.csv and all_mps_mapping.csv in a CSV's folder add names and parties.
"""

from __future__ import annotations

from ml_playground.experiments import PrepareContext, register


@register("speakger")
def prepare(ctx: PrepareContext) -> None:
    # Imported here: discovery imports every prepare.py, and transformers loads for seconds.
    from ml_playground.data.records import prepare_speeches, require_hf_model  # noqa: PLC0415
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415

    hf = require_hf_model(ctx.config)
    prepare_speeches(ctx.config, frozenset({".csv"}), tokenizer_loader(hf), force=ctx.force)
