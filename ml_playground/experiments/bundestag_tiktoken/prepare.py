"""Prepare bundestag_tiktoken: tiktoken BPE tokens from German parliamentary text.

Same sources as bundestag_char (including its bundled sample when nothing is given); the
vocabulary comes from the tiktoken encoding set in [prepare] encoding.
"""

from __future__ import annotations

from ml_playground.data.corpus import prepare_corpus
from ml_playground.experiments import PrepareContext, register
from ml_playground.experiments.bundestag_char.prepare import sources_or_bundled_sample


@register("bundestag_tiktoken")
def prepare(ctx: PrepareContext) -> None:
    prepare_corpus(ctx.config, sources_or_bundled_sample(ctx.config.prepare), force=ctx.force)
