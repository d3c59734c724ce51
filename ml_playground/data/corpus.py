"""Text corpora of the from-scratch experiments: where the text is, and preparing it.

What is read, first match wins (`text_sources`, the `[prepare] source = "text"` rule):

    raw_text_path         one file
    raw_dir               every .txt below a folder
    dataset_dir/input.txt a corpus placed where the experiment keeps its data
    download_url          fetched into dataset_dir/input.txt
    fallback_text         a corpus bundled with the package by name ("tiny_shakespeare"),
                          read in place; or a file (an experiment's sample), seeded into
                          dataset_dir/input.txt, the file a user then replaces
    else                  one error line saying where to put text
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from ml_playground.atomic import atomic_open
from ml_playground.config import ExperimentConfig, PrepareConfig
from ml_playground.data.sources import BUNDLED_CORPORA, download, raw_text_file, text_files
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


def text_sources(prepare: PrepareConfig) -> list[Path]:
    """The corpus to tokenize, by the rule of the module docstring."""
    sources = configured_sources(prepare)
    if sources is not None:
        return sources
    target = default_input(prepare)
    if not target.is_file() and prepare.download_url is not None:
        print(f"downloading {prepare.download_url} to {target}")
        download(prepare.download_url, target)
    if target.is_file():
        return [target]
    if prepare.fallback_text is not None:
        return [_fallback(prepare.fallback_text, target)]
    # The instruction must work as written, also where the folder does not exist yet.
    missing = not target.parent.is_dir()
    folder = f"mkdir -p {shlex.quote(str(target.parent))} and " if missing else ""
    raise DataError(
        f"no text to prepare: {folder}place a corpus at {target}, or set "
        "[prepare] raw_text_path (a file) or raw_dir (a folder of .txt files)"
    )


def _fallback(value: str, target: Path) -> Path:
    """A bundled corpus read in place, or a sample file seeded into `target`."""
    if value in BUNDLED_CORPORA:
        path, title = BUNDLED_CORPORA[value]
        print(f"no corpus placed at {target}: using the bundled {title}")
        return path
    sample = Path(value)
    if not sample.is_file():
        names = ", ".join(repr(name) for name in BUNDLED_CORPORA)
        raise DataError(
            f"prepare.fallback_text = {value!r} is neither a file nor a bundled corpus "
            f"({names}); fix the path or remove the key"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a half-copied input.txt would be taken for a corpus the user placed.
    with sample.open("rb") as source, atomic_open(target) as seeded:
        shutil.copyfileobj(source, seeded)
    print(
        f"no corpus given: seeded the bundled sample {sample.name} "
        f"({sample.stat().st_size:,} bytes) into {target}; replace it with your own text"
    )
    return target


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
