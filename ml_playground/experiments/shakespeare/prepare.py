"""Prepare shakespeare: GPT-2 BPE tokens of Tiny Shakespeare.

What is read, first match wins: a local source in [prepare] (raw_text_path or raw_dir);
datasets/input.txt if a file was placed there; a download from [prepare] download_url
into datasets/input.txt when that key is set; else the copy bundled with the package, so
the first run needs no network.
"""

from __future__ import annotations

from ml_playground.data.corpus import configured_sources, default_input, prepare_corpus
from ml_playground.data.sources import TINY_SHAKESPEARE, download
from ml_playground.experiments import PrepareContext, register


@register("shakespeare")
def prepare(ctx: PrepareContext) -> None:
    settings = ctx.config.prepare
    sources = configured_sources(settings)
    if sources is None:
        target = default_input(settings)
        if not target.is_file() and settings.download_url is not None:
            print(f"downloading {settings.download_url} to {target}")
            download(settings.download_url, target)
        if target.is_file():
            sources = [target]
        else:
            print(f"no corpus placed at {target}: using the bundled Tiny Shakespeare")
            sources = [TINY_SHAKESPEARE]
    prepare_corpus(ctx.config, sources, force=ctx.force)
