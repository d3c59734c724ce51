"""Prepare bundestag_char: character-level tokens from German parliamentary text.

Text comes from [prepare] raw_text_path / raw_dir, else datasets/input.txt. With neither,
a small bundled sample (written for this project) is seeded into datasets/input.txt so
the loop runs out of the box; real speeches give far better models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ml_playground.config import PrepareConfig
from ml_playground.data.corpus import configured_sources, default_input, prepare_corpus
from ml_playground.experiments import PrepareContext, register

BUNDLED_SAMPLE = Path(__file__).with_name("sample_corpus.txt")


def sources_or_bundled_sample(prepare: PrepareConfig) -> list[Path]:
    """The configured corpus, else datasets/input.txt, seeded from the sample if missing."""
    sources = configured_sources(prepare)
    if sources is not None:
        return sources
    target = default_input(prepare)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUNDLED_SAMPLE, target)
        print(
            f"no corpus given: seeded the bundled sample ({BUNDLED_SAMPLE.stat().st_size:,} "
            f"bytes of parliamentary-style text) into {target}; replace it with real speeches"
        )
    return [target]


@register("bundestag_char")
def prepare(ctx: PrepareContext) -> None:
    prepare_corpus(ctx.config, sources_or_bundled_sample(ctx.config.prepare), force=ctx.force)
