"""Each verb's own options, built by the CLI from its flags and taken by its pipeline step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PrepareOptions:
    force: bool = False  # prepare again even when the dataset is up to date


@dataclass(frozen=True)
class InspectOptions:
    windows: int | None = None  # how many training windows to show; None: the default


@dataclass(frozen=True)
class TrainOptions:
    fresh: bool = False  # set the existing out_dir aside and start a new run


@dataclass(frozen=True)
class LoopOptions:
    force: bool = False
    fresh: bool = False


@dataclass(frozen=True)
class EvalOptions:
    text: Path | None = None  # score this file instead of the val split
