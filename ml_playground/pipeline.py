"""The pipeline steps the CLI calls: prepare, inspect, train, sample, chat, loop, report,
compare, export, eval, new.

Which trainer and which sampling backend run is decided by the config's content: a
`[train.hf_model]` section selects Hugging Face LoRA fine-tuning, otherwise the
from-scratch GPT runs; sampling (sample/run.py) and chat (sample/chat.py) are each one
front end for both.
Heavy libraries are imported inside the steps so that `--help`, `list` and config errors
answer instantly instead of waiting seconds for torch and transformers to load.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml_playground.config import ExperimentConfig
from ml_playground.config_loader import LoadedConfig, load_config
from ml_playground.data import dataset_folder
from ml_playground.errors import ConfigError, UserError
from ml_playground.experiments import (
    EXPERIMENTS_ROOT,
    Experiment,
    PrepareContext,
    list_experiments,
    new_experiments_root,
    resolve_preparer,
)

if TYPE_CHECKING:
    from ml_playground.sample.backend import LoadedModel  # imports torch

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


_FORCE_PREPARE: ContextVar[bool] = ContextVar("force_prepare", default=False)


@contextmanager
def forcing(*, prepare: bool) -> Generator[None]:
    """`--force`: within this block, `prepare` prepares again even when up to date."""
    token = _FORCE_PREPARE.set(prepare)
    try:
        yield
    finally:
        _FORCE_PREPARE.reset(token)


def prepare(experiment: Experiment, loaded: LoadedConfig) -> None:
    _single_process("prepare")
    preparer = resolve_preparer(experiment, loaded.config.prepare.dataset)
    preparer(
        PrepareContext(experiment.name, experiment.directory, loaded.config, _FORCE_PREPARE.get())
    )


def inspect(experiment: Experiment, loaded: LoadedConfig, windows: int | None = None) -> None:
    """What the model will be trained on: the prepared dataset, `windows` training windows
    as the batcher draws them, and the checks' warnings. Never prepares."""
    del experiment
    _single_process("inspect")
    from ml_playground.inspect_dataset import DEFAULT_WINDOWS  # noqa: PLC0415 - see module docstring
    from ml_playground.inspect_dataset import inspect as inspect_dataset  # noqa: PLC0415 - see module docstring

    inspect_dataset(loaded.config, DEFAULT_WINDOWS if windows is None else windows)


def compare(runs: list[str], out: Path) -> None:
    """Several runs side by side: a table on stdout, compare.md and compare.png in `out`."""
    _single_process("compare")
    from ml_playground.compare import compare as compare_runs  # noqa: PLC0415 - see module docstring

    table, plot = compare_runs(runs, out)
    print(f"compare: {table} and {plot}")


def set_aside_out_dir(config: ExperimentConfig) -> Path | None:
    """`train --fresh`: rename out_dir to the first free out_dir.N; never delete a run."""
    from ml_playground.distributed import ranks_from_env  # noqa: PLC0415 - imports torch

    out_dir = config.train.runtime.out_dir
    if ranks_from_env().is_distributed:
        raise ConfigError(
            f"--fresh renames {out_dir} in one process; run without torchrun/accelerate "
            "once, or move the folder yourself, then start the distributed run"
        )
    if not out_dir.exists():
        return None
    from ml_playground.checkpoint import running_holder  # noqa: PLC0415 - imports torch

    holder = running_holder(out_dir)
    if holder is not None:
        # Moving it would pull the folder from under a run that keeps writing by its path.
        raise ConfigError(
            f"--fresh: {out_dir} is in use by a training run (pid {holder}); wait for it or "
            "stop it, then run again"
        )
    number = 1
    while out_dir.with_name(f"{out_dir.name}.{number}").exists():
        number += 1
    target = out_dir.with_name(f"{out_dir.name}.{number}")
    out_dir.rename(target)  # one rename on one file system: the run moves whole or not at all
    return target


@dataclass(frozen=True)
class ExperimentState:
    """What `list` shows of an experiment: where it lives and how far it got."""

    experiment: Experiment
    state: tuple[str, ...]


# The checkpoint store's file names (checkpoint.py), matched here without importing torch.
_TRAINED_PATTERNS = ("ckpt_best.pt", "ckpt_last.pt", "ckpt.pt", "adapters/*/adapter_config.json")


def experiment_states() -> list[ExperimentState]:
    states: list[ExperimentState] = []
    for experiment in list_experiments():
        try:
            config = load_config(experiment.config_path, experiment.directory).config
        except UserError:
            states.append(ExperimentState(experiment, ("config has an error",)))
            continue
        state: list[str] = []
        if (config.prepare.dataset_dir / dataset_folder.META_FILE).is_file():
            state.append("prepared")
        out_dir = config.train.runtime.out_dir
        if any(any(out_dir.glob(pattern)) for pattern in _TRAINED_PATTERNS):
            state.append("trained")
        states.append(ExperimentState(experiment, tuple(state)))
    return states


def train(experiment: Experiment, loaded: LoadedConfig) -> None:
    # The report (out_dir/report.md, loss.png) follows the run, also one stopped by Ctrl-C.
    from ml_playground.train.report_card import reported  # noqa: PLC0415 - see module docstring

    with reported(loaded, experiment.name):
        if loaded.config.uses_hf_model:
            from ml_playground.train.hf import train_lora  # noqa: PLC0415 - see module docstring

            train_lora(loaded.config)
            return
        from ml_playground.train.gpt import train_gpt  # noqa: PLC0415 - see module docstring

        train_gpt(loaded.config)


def sample(experiment: Experiment, loaded: LoadedConfig) -> None:
    del experiment
    _single_process("sample")
    from ml_playground.sample.run import sample_texts  # noqa: PLC0415 - see module docstring

    texts = sample_texts(loaded.config, _trained_model(loaded.config))
    _log_first_sample(loaded, texts)


def chat(experiment: Experiment, loaded: LoadedConfig) -> None:
    del experiment
    _single_process("chat")
    from ml_playground.sample.chat import chat as chat_loop  # noqa: PLC0415 - see module docstring

    chat_loop(loaded.config, _trained_model(loaded.config))


def _trained_model(config: ExperimentConfig) -> LoadedModel:
    """The trained model of config's out_dir, ready to generate: both backends feed the same
    front ends (sample, chat); only loading the model differs."""
    if config.uses_hf_model:
        from ml_playground.sample.hf import load_hf  # noqa: PLC0415 - see module docstring

        return load_hf(config)
    from ml_playground.sample.gpt import load_gpt  # noqa: PLC0415 - see module docstring

    return load_gpt(config)


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


def evaluate(experiment: Experiment, loaded: LoadedConfig, text: Path | None = None) -> None:
    """Loss, perplexity and bits per byte of the trained model on its val split or `text`."""
    del experiment
    _single_process("eval")
    from ml_playground.sample.evaluate import evaluate as evaluate_model  # noqa: PLC0415 - see module docstring

    if loaded.config.uses_hf_model:
        from ml_playground.sample.hf import load_hf  # noqa: PLC0415 - see module docstring

        evaluate_model(loaded.config, load_hf, text)
        return
    from ml_playground.sample.gpt import load_gpt  # noqa: PLC0415 - see module docstring

    evaluate_model(loaded.config, load_gpt, text)


def new_experiment(name: str, parent: Path | None) -> Path:
    """Copy the template into `parent/name`, filling in the experiment's name; without a
    parent, into the folder `new_experiments_root` names."""
    if not EXPERIMENT_NAME.match(name):
        raise ConfigError(
            f"invalid experiment name {name!r}: use lowercase letters, digits and _, "
            "starting with a letter"
        )
    target = (parent or new_experiments_root()) / name
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
