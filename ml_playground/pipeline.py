"""The pipeline steps the CLI calls: prepare, train, sample, loop, report, export, new.

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
    # The report (out_dir/report.md, loss.png) follows the run, also one stopped by Ctrl-C.
    from ml_playground.train.report_card import reported  # noqa: PLC0415 - see module docstring

    with reported(loaded, experiment.name):
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

        texts = sample_texts(loaded.config, load_hf(loaded.config))
    else:
        from ml_playground.sample.gpt import load_gpt  # noqa: PLC0415 - see module docstring

        texts = sample_texts(loaded.config, load_gpt(loaded.config))
    _log_first_sample(loaded, texts)


def _log_first_sample(loaded: LoadedConfig, texts: list[str]) -> None:
    """The first sample goes to TensorBoard too, beside the run's curves."""
    from ml_playground.train.report_card import log_first_sample  # noqa: PLC0415 - see module docstring

    if texts:
        log_first_sample(loaded, texts[0])


def loop(experiment: Experiment, loaded: LoadedConfig) -> None:
    prepare(experiment, loaded)
    train(experiment, loaded)
    sample(experiment, loaded)
    if loaded.config.train.runtime.tensorboard_enabled:
        report(experiment, loaded)  # again, now with the samples


def report(experiment: Experiment, loaded: LoadedConfig) -> None:
    """Rebuild out_dir/report.md and loss.png from the run's TensorBoard events."""
    _single_process("report")
    from ml_playground.train.report_card import PLOT_FILE, write_report  # noqa: PLC0415 - see module docstring

    written = write_report(loaded, experiment.name)
    print(f"report: {written} and {written.with_name(PLOT_FILE)}")


def export(experiment: Experiment, loaded: LoadedConfig) -> None:
    from ml_playground.export import export_experiment  # noqa: PLC0415 - see module docstring

    export_experiment(loaded.config, experiment.name)


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
