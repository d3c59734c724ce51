"""Text corpora of the from-scratch experiments: where the text is, and preparing it.

A corpus comes from `[prepare] raw_text_path` (one file), `raw_dir` (every .txt below a
folder) or, when neither is set, `dataset_dir/input.txt`. Experiments decide what happens
when none exists yet (download it, seed a bundled sample, or stop with an error).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ml_playground.config import ExperimentConfig, PrepareConfig
from ml_playground.data.sources import raw_text_file, text_files
from ml_playground.data.token_dataset import PrepareOutcome, prepare_token_dataset
from ml_playground.errors import DataError

DEFAULT_INPUT = "input.txt"


def default_input(prepare: PrepareConfig) -> Path:
    return prepare.dataset_dir / DEFAULT_INPUT


def configured_sources(prepare: PrepareConfig) -> list[Path] | None:
    """Sources named in the config, or None when the config names none."""
    if prepare.raw_text_path is not None:
        return [raw_text_file(prepare.raw_text_path)]
    if prepare.raw_dir is not None:
        if not prepare.raw_dir.is_dir():
            raise DataError(
                f"prepare.raw_dir {prepare.raw_dir} is not a folder; fix the path or remove the key"
            )
        return text_files(prepare.raw_dir)
    return None


def require_sources(prepare: PrepareConfig) -> list[Path]:
    """Configured sources, else dataset_dir/input.txt, else an error saying where to put text."""
    sources = configured_sources(prepare)
    if sources is not None:
        return sources
    fallback = default_input(prepare)
    if fallback.is_file():
        return [fallback]
    # The instruction must work as written, also where the folder does not exist yet.
    missing = not fallback.parent.is_dir()
    folder = f"mkdir -p {shlex.quote(str(fallback.parent))} and " if missing else ""
    raise DataError(
        f"no text to prepare: {folder}place a corpus at {fallback}, or set "
        "[prepare] raw_text_path (a file) or raw_dir (a folder of .txt files)"
    )


def prepare_corpus(
    config: ExperimentConfig, sources: list[Path], *, force: bool = False
) -> PrepareOutcome:
    """Tokenize `sources` into the experiment's dataset_dir with its tokenizer settings
    (again even when up to date, with `force`)."""
    prepare = config.prepare
    outcome = prepare_token_dataset(
        sources,
        prepare.dataset_dir,
        tokenizer_kind=prepare.tokenizer,
        encoding=prepare.encoding,
        train_split=prepare.train_split,
        chunk_bytes=prepare.chunk_bytes,
        vocab_size_limit=config.train.model.vocab_size,
        force=force,
    )
    print(outcome.message)
    return outcome
