"""Tiny trained runs with TensorBoard events, for the tests of `compare`.

Each is a char (or tiktoken) GPT experiment from tests/experiments.py trained in-process
for a few steps, logging every step and evaluating every other one, so its events hold
train and val losses, tokens seen, parameters and timings, as a real run's do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ml_playground.config_loader import LoadedConfig
from tests.experiments import char_gpt, prepare
from tests.toml_helpers import TomlValue

EVENT_SETTINGS: Mapping[str, TomlValue] = {
    "train.runtime.max_iters": 4,
    "train.runtime.eval_interval": 2,
    "train.runtime.eval_iters": 2,
    "train.runtime.log_interval": 1,
    "train.runtime.tensorboard_enabled": True,
}


def trained_run(folder: Path, changes: Mapping[str, TomlValue] | None = None) -> LoadedConfig:
    """A tiny experiment in `folder`, prepared and trained for four steps with events."""
    from ml_playground.train.gpt import train_gpt  # noqa: PLC0415 - imports the trainer

    loaded = char_gpt(folder, {**EVENT_SETTINGS, **(changes or {})}, corpus_chars=5000)
    prepare(loaded)
    train_gpt(loaded.config)
    return loaded
