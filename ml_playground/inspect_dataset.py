"""The `inspect` verb: what the model will be trained on, read from the prepared dataset.

It prints, in this order: what the dataset is (inspect_windows.py: source, format,
tokenizer, context, records, tokens and targets per split, record lengths), the first
`--n` windows the run's batcher draws, decoded, with the targets marked, and then the
checks' warnings (dataset_checks.py), one line each. All of it goes to stdout, so
`inspect EXP > windows.txt` keeps everything; on a terminal the targets are coloured,
elsewhere (a pipe, a file, or with NO_COLOR set) they stand between plain markers.

The module sits above finetune/ because a records dataset's tokenizer is a Hugging Face
one and finetune/hub.py is what loads it; data/ receives the loader as an argument.
"""

from __future__ import annotations

import os
import sys
import typing
from pathlib import Path

from ml_playground import console, dataset_checks, inspect_windows, inspection
from ml_playground.config import ExperimentConfig
from ml_playground.data.rendering import ChatTokenizer

DEFAULT_WINDOWS = 3


def inspect(config: ExperimentConfig, windows: int = DEFAULT_WINDOWS) -> None:
    """Print the dataset of `config`, `windows` training windows and the checks' warnings."""
    colour = wants_colour()
    with inspection.opened(config, _load_tokenizer) as dataset:
        lines = inspect_windows.summary_lines(dataset, config)
        drawn = inspect_windows.draw_windows(dataset, config, windows)
        lines += ["", inspect_windows.legend(colour=colour)]
        for window in drawn:
            lines += [
                inspect_windows.window_heading(window, len(drawn)),
                inspect_windows.render_window(window, dataset.decode, colour=colour),
            ]
        lines.append("")
        notes = [*dataset.notes, dataset_checks.windows_mid_record(drawn)]
        lines += [f"note: {note}" for note in notes if note is not None]
        warnings = dataset_checks.run_checks(dataset)
        lines += warnings or ["checks: no warnings"]
    console.write("\n".join(lines) + "\n")


def wants_colour() -> bool:
    """Colour only for a terminal, and not where the user asked for none (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _load_tokenizer(folder: Path) -> ChatTokenizer:
    from ml_playground.finetune.hub import ModelSource, load_tokenizer  # noqa: PLC0415 - imports transformers

    return typing.cast(ChatTokenizer, load_tokenizer(ModelSource.local(folder)))
