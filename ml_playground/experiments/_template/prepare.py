"""Prepare {{name}}: tokenize a local text corpus into train.bin / val.bin / meta.json."""

from __future__ import annotations

from ml_playground.data.corpus import prepare_corpus, require_sources
from ml_playground.experiments import PrepareContext, register


@register("{{name}}")
def prepare(ctx: PrepareContext) -> None:
    # Sources: [prepare] raw_text_path or raw_dir, else datasets/input.txt.
    sources = require_sources(ctx.config.prepare)
    prepare_corpus(ctx.config, sources, force=ctx.force)
