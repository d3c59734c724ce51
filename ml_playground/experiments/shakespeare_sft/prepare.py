"""Prepare shakespeare_sft: both halves of pretrain -> fine-tune, chosen by the config.

`pretrain.toml` (no [train.hf_model]) prepares GPT-2 BPE tokens of Tiny Shakespeare,
exactly as the `shakespeare` experiment does; `config.toml` (the fine-tune, whose
[train.hf_model] is the exported folder) prepares the chat records of chats.jsonl,
rendered with [prepare] chat_template and tokenized with the exported tokenizer.
"""

from __future__ import annotations

from ml_playground.data.corpus import configured_sources, prepare_corpus
from ml_playground.data.sources import TINY_SHAKESPEARE
from ml_playground.experiments import PrepareContext, register


@register("shakespeare_sft")
def prepare(ctx: PrepareContext) -> None:
    if not ctx.config.uses_hf_model:
        prepare_corpus(
            ctx.config,
            configured_sources(ctx.config.prepare) or [TINY_SHAKESPEARE],
            force=ctx.force,
        )
        return
    # Imported here: discovery imports every prepare.py, and transformers loads for seconds.
    from ml_playground.data.chat_records import prepare_chat_records  # noqa: PLC0415
    from ml_playground.data.records import require_hf_model  # noqa: PLC0415
    from ml_playground.finetune.hub import tokenizer_loader  # noqa: PLC0415

    prepare_chat_records(
        ctx.config, tokenizer_loader(require_hf_model(ctx.config)), force=ctx.force
    )
