"""Prepare shakespeare: GPT-2 BPE tokens of Tiny Shakespeare.

A local source in [prepare] (raw_text_path or raw_dir) wins; otherwise datasets/input.txt
is used, downloaded from download_url first when it is missing.
"""

from __future__ import annotations

from ml_playground.data.corpus import configured_sources, default_input, prepare_corpus
from ml_playground.data.sources import download
from ml_playground.experiments import PrepareContext, register

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


@register("shakespeare")
def prepare(ctx: PrepareContext) -> None:
    settings = ctx.config.prepare
    sources = configured_sources(settings)
    if sources is None:
        target = default_input(settings)
        if not target.is_file():
            url = settings.download_url or TINY_SHAKESPEARE_URL
            print(f"downloading Tiny Shakespeare from {url} to {target}")
            download(url, target)
        sources = [target]
    prepare_corpus(ctx.config, sources)
