"""Tiny from-scratch GPT experiments for tests: a corpus, a small config, a copied folder.

Everything is written under the folder a test passes in (its tmp_path), never into the
source tree. Configs are real TOML files read by `load_config`, so tests exercise the same
path resolution and validation a user's run goes through.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from ml_playground.config_loader import LoadedConfig, load_config
from ml_playground.data.corpus import prepare_corpus, text_sources
from ml_playground.experiments import EXPERIMENTS_ROOT
from tests.conftest import SHARED_DIR
from tests.toml_helpers import write_toml

SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"

TomlValue = str | int | float | bool

# Small enough that a step takes milliseconds on one CPU thread, big enough to learn.
TINY_SETTINGS: Mapping[str, TomlValue] = {
    "prepare.tokenizer": "char",
    "prepare.raw_text_path": "input.txt",
    "train.model.n_layer": 2,
    "train.model.n_head": 2,
    "train.model.n_embd": 32,
    "train.model.block_size": 32,
    "train.model.dropout": 0.0,
    "train.data.batch_size": 8,
    "train.optim.learning_rate": 1e-2,
    "train.optim.beta2": 0.99,
    "train.schedule.warmup_iters": 5,
    "train.schedule.lr_decay_iters": 60,
    "train.schedule.min_lr": 1e-3,
    "train.runtime.max_iters": 60,
    "train.runtime.eval_interval": 20,
    "train.runtime.eval_iters": 4,
    "train.runtime.log_interval": 10,
    "train.runtime.device": "cpu",
    # Not the presets' "auto": a test computes the same on every machine.
    "train.runtime.dtype": "float32",
    "train.runtime.tensorboard_enabled": False,
    "sample.sample.start": "ROMEO:",
    "sample.sample.num_samples": 1,
    "sample.sample.max_new_tokens": 24,
    "sample.sample.stream": False,
}


def shakespeare_text(chars: int) -> str:
    """The first `chars` characters of Tiny Shakespeare (from the shared, offline copy)."""
    with SHAKESPEARE.open(encoding="utf-8") as handle:
        return handle.read(chars)


write_config = write_toml


def tiny_experiment(
    folder: Path,
    changes: Mapping[str, TomlValue] | None = None,
    *,
    corpus_chars: int = 20_000,
) -> LoadedConfig:
    """A char-level experiment in `folder`: input.txt, config.toml (tiny settings + changes).

    The corpus is only written when missing, so a test can put its own text there first.
    Paths stay at their defaults: datasets/ and out/ inside `folder`.
    """
    corpus = folder / "input.txt"
    if not corpus.exists():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text(shakespeare_text(corpus_chars), encoding="utf-8")
    return reconfigure(folder, changes)


def reconfigure(folder: Path, changes: Mapping[str, TomlValue] | None = None) -> LoadedConfig:
    """Rewrite the experiment's config.toml as the tiny settings plus `changes`, and load it."""
    config_path = write_config(folder / "config.toml", {**TINY_SETTINGS, **(changes or {})})
    return load_config(config_path, folder)


def prepare(loaded: LoadedConfig) -> None:
    """Tokenize the experiment's corpus into its dataset_dir (skipped when up to date)."""
    prepare_corpus(loaded.config, text_sources(loaded.config.prepare))


def copy_experiment(name: str, parent: Path) -> Path:
    """A copy of a packaged experiment folder at parent/name, without data or outputs.

    The folder keeps its name, so its prepare.py registers the preparer the CLI looks up.
    """
    target = parent / name
    shutil.copytree(
        EXPERIMENTS_ROOT / name,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "datasets", "out"),
    )
    return target
