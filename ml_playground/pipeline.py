"""The pipeline steps the CLI calls: prepare, train, sample, loop, export, eval, new.

Which trainer and which sampling backend run is decided by the config's content: a
`[train.hf_model]` section selects Hugging Face LoRA fine-tuning, otherwise the
from-scratch GPT runs; sampling has one front end (sample/run.py) for both.
Heavy libraries are imported inside the steps so that `--help`, `list` and config errors
answer instantly instead of waiting seconds for torch and transformers to load.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ml_playground.config import LoadedConfig
from ml_playground.errors import ConfigError
from ml_playground.experiments import (
    EXPERIMENTS_ROOT,
    Experiment,
    PrepareContext,
    resolve_preparer,
)

TEMPLATE_DIR = EXPERIMENTS_ROOT / "_template"
TEMPLATE_PLACEHOLDER = "{{name}}"
EXPERIMENT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _single_process(step: str) -> None:
    """Only training is distributed; the other steps would race on the same files."""
    from ml_playground.distributed import ranks_from_env  # noqa: PLC0415 - imports torch

    if ranks_from_env().is_distributed:
        raise ConfigError(
            f"`{step}` runs in one process; start it without torchrun/accelerate "
            "(only `train` is distributed)"
        )


def prepare(experiment: Experiment, loaded: LoadedConfig) -> None:
    _single_process("prepare")
    preparer = resolve_preparer(experiment, loaded.config.prepare.dataset)
    preparer(PrepareContext(experiment.name, experiment.directory, loaded.config))


def train(experiment: Experiment, loaded: LoadedConfig) -> None:
    del experiment  # the config carries every path a trainer needs
    if loaded.config.uses_hf_model:
        from ml_playground.finetune.trainer import train_lora  # noqa: PLC0415 - see module docstring

        train_lora(loaded.config)
        return
    from ml_playground.train.gpt import train_gpt  # noqa: PLC0415 - see module docstring

    train_gpt(loaded.config)


def sample(experiment: Experiment, loaded: LoadedConfig) -> None:
    del experiment
    _single_process("sample")
    # Both backends feed one front end; only loading the model differs.
    from ml_playground.sample.run import sample_texts  # noqa: PLC0415 - see module docstring

    if loaded.config.uses_hf_model:
        from ml_playground.finetune.inference import load_hf  # noqa: PLC0415 - see module docstring

        sample_texts(loaded.config, load_hf(loaded.config))
        return
    from ml_playground.sample.gpt import load_gpt  # noqa: PLC0415 - see module docstring

    sample_texts(loaded.config, load_gpt(loaded.config))


def loop(experiment: Experiment, loaded: LoadedConfig) -> None:
    prepare(experiment, loaded)
    train(experiment, loaded)
    sample(experiment, loaded)


def export(experiment: Experiment, loaded: LoadedConfig) -> None:
    from ml_playground.export import export_experiment  # noqa: PLC0415 - see module docstring

    export_experiment(loaded.config, experiment.name)


def evaluate(experiment: Experiment, loaded: LoadedConfig, text: Path | None = None) -> None:
    """Loss, perplexity and bits per byte of the trained model on its val split or `text`."""
    del experiment
    _single_process("eval")
    from ml_playground.sample.evaluate import evaluate as evaluate_model  # noqa: PLC0415 - see module docstring

    if loaded.config.uses_hf_model:
        from ml_playground.finetune.inference import load_hf  # noqa: PLC0415 - see module docstring

        evaluate_model(loaded.config, load_hf, text)
        return
    from ml_playground.sample.gpt import load_gpt  # noqa: PLC0415 - see module docstring

    evaluate_model(loaded.config, load_gpt, text)


def new_experiment(name: str, parent: Path | None) -> Path:
    """Copy the template into `parent/name`, filling in the experiment's name."""
    if not EXPERIMENT_NAME.match(name):
        raise ConfigError(
            f"invalid experiment name {name!r}: use lowercase letters, digits and _, "
            "starting with a letter"
        )
    target = (parent or EXPERIMENTS_ROOT) / name
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(TEMPLATE_DIR, staging, ignore=shutil.ignore_patterns("__pycache__"))
    for path in staging.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".toml", ".md"}:
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace(TEMPLATE_PLACEHOLDER, name), encoding="utf-8")
    staging.replace(target)
    return target
