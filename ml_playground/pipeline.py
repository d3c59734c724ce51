"""The pipeline steps the CLI calls: prepare, inspect, train, sample, chat, loop, report,
compare, export, eval, new.

Each verb takes its own frozen options (`options.PrepareOptions`, `TrainOptions`, ...),
built by the CLI from its flags. Which backend trains, loads and exports is decided by the config's
content, once, in `ml_playground.backends.backend_for`; sampling (sample/run.py), chat
(sample/chat.py), eval (sample/evaluate.py) and export are each one front end for both.
Heavy libraries are imported inside the steps so that `--help`, `list` and config errors
answer instantly instead of waiting seconds for torch and transformers to load.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ml_playground import run_folder
from ml_playground.backends import backend_for
from ml_playground.config import ExperimentConfig
from ml_playground.config_loader import LoadedConfig
from ml_playground.errors import ConfigError
from ml_playground.experiments import Experiment, PrepareContext, resolve_preparer
from ml_playground.options import (
    EvalOptions,
    InspectOptions,
    LoopOptions,
    PrepareOptions,
    TrainOptions,
)


def _single_process(step: str) -> None:
    """Only training is distributed; the other steps would race on the same files."""
    from ml_playground.distributed import ranks_from_env  # noqa: PLC0415 - imports torch

    if ranks_from_env().is_distributed:
        raise ConfigError(
            f"`{step}` runs in one process; start it without torchrun/accelerate "
            "(only `train` is distributed)"
        )


def prepare(
    experiment: Experiment, loaded: LoadedConfig, options: PrepareOptions = PrepareOptions()
) -> None:
    _single_process("prepare")
    preparer = resolve_preparer(experiment, loaded.config.prepare, loaded.config_path)
    preparer(PrepareContext(experiment.name, experiment.directory, loaded.config, options.force))


def inspect(
    experiment: Experiment, loaded: LoadedConfig, options: InspectOptions = InspectOptions()
) -> None:
    """What the model will be trained on: the prepared dataset, `windows` training windows
    as the batcher draws them, and the checks' warnings. Never prepares."""
    del experiment
    _single_process("inspect")
    from ml_playground.inspect_dataset import DEFAULT_WINDOWS  # noqa: PLC0415 - see module docstring
    from ml_playground.inspect_dataset import inspect as inspect_dataset  # noqa: PLC0415 - see module docstring

    windows = options.windows
    inspect_dataset(loaded.config, DEFAULT_WINDOWS if windows is None else windows)


def compare(runs: list[str], out: Path) -> None:
    """Several runs side by side: a table on stdout, compare.md and compare.png in `out`."""
    _single_process("compare")
    from ml_playground.compare import compare as compare_runs  # noqa: PLC0415 - see module docstring

    table, plot = compare_runs(runs, out)
    print(f"compare: {table} and {plot}")


def _start_fresh(config: ExperimentConfig) -> None:
    moved = run_folder.set_aside(config.train.runtime.out_dir)
    if moved is not None:
        print(f"--fresh: moved the previous run to {moved}", file=sys.stderr)


def train(
    experiment: Experiment, loaded: LoadedConfig, options: TrainOptions = TrainOptions()
) -> None:
    if options.fresh:
        _start_fresh(loaded.config)
    # The report (out_dir/report.md, loss.png) follows the run, also one stopped by Ctrl-C.
    from ml_playground.train.report_card import reported  # noqa: PLC0415 - see module docstring

    with reported(loaded, experiment.name):
        backend_for(loaded.config).train(loaded.config)


def sample(experiment: Experiment, loaded: LoadedConfig) -> None:
    del experiment
    _single_process("sample")
    from ml_playground.sample.run import sample_texts  # noqa: PLC0415 - see module docstring
    from ml_playground.train.report_card import log_first_sample  # noqa: PLC0415 - see module docstring

    texts = sample_texts(loaded.config, backend_for(loaded.config).load(loaded.config))
    if texts:  # the first sample goes to TensorBoard too, beside the run's curves
        log_first_sample(loaded, texts[0])


def chat(experiment: Experiment, loaded: LoadedConfig) -> None:
    del experiment
    _single_process("chat")
    from ml_playground.sample.chat import chat as chat_loop  # noqa: PLC0415 - see module docstring

    chat_loop(loaded.config, backend_for(loaded.config).load(loaded.config))


def loop(
    experiment: Experiment, loaded: LoadedConfig, options: LoopOptions = LoopOptions()
) -> None:
    if options.fresh:
        _start_fresh(loaded.config)  # first, as `train --fresh` does, before preparing
    prepare(experiment, loaded, PrepareOptions(force=options.force))
    train(experiment, loaded)
    sample(experiment, loaded)
    if loaded.config.train.runtime.tensorboard_enabled:
        report(experiment, loaded)  # again, now with the samples


def report(experiment: Experiment, loaded: LoadedConfig) -> None:
    """Rebuild out_dir/report.md and loss.png from the run's TensorBoard events."""
    _single_process("report")
    from ml_playground.train.report_card import write_report  # noqa: PLC0415 - see module docstring

    written = write_report(loaded, experiment.name)
    print(f"report: {written} and {run_folder.plot_file(written.parent)}")


def export(experiment: Experiment, loaded: LoadedConfig) -> None:
    from ml_playground.export import export_experiment  # noqa: PLC0415 - see module docstring

    export_experiment(loaded.config, backend_for(loaded.config), experiment.name)


def evaluate(
    experiment: Experiment, loaded: LoadedConfig, options: EvalOptions = EvalOptions()
) -> None:
    """Loss, perplexity and bits per byte of the trained model on its val split or a file."""
    del experiment
    _single_process("eval")
    from ml_playground.sample.evaluate import evaluate_run  # noqa: PLC0415 - see module docstring

    evaluate_run(loaded.config, backend_for(loaded.config), options.text)
