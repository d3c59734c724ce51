"""Prepare qwen_chat_lora: JSONL records rendered with the model's chat template.

[prepare] records_path names a .jsonl file or a folder of them, format their shape
(text, prompt_completion or messages); see ml_playground/data/chat_records.py. Records,
tokenizer and meta.json land in dataset_dir.
"""

from __future__ import annotations

from ml_playground.experiments import PrepareContext, register


@register("qwen_chat_lora")
def prepare(ctx: PrepareContext) -> None:
    # Imported here: discovery imports every prepare.py, and transformers loads for seconds.
    from ml_playground.data.chat_records import prepare_chat_records  # noqa: PLC0415
    from ml_playground.data.records import require_hf_model  # noqa: PLC0415
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415

    prepare_chat_records(
        ctx.config, tokenizer_loader(require_hf_model(ctx.config)), force=ctx.force
    )
