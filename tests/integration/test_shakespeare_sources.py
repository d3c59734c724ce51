"""Which text the shakespeare experiment prepares: the user's own wins over the bundled copy
(which is read when nothing was placed: tests/e2e/test_offline_cli.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ml_playground import pipeline
from ml_playground.config_loader import load_config
from ml_playground.experiments import find_experiment
from tests.toml_helpers import TomlValue, write_toml

OWN_TEXT = "First Citizen:\nWe are accounted poor citizens.\n" * 200


def prepared_sources(folder: Path, changes: Mapping[str, TomlValue]) -> list[str]:
    """Prepare shakespeare with a config in `folder` plus `changes`; the sources it read."""
    config = write_toml(
        folder / "tiny.toml",
        {"prepare.tokenizer": "tiktoken", "prepare.dataset_dir": "datasets", **changes},
    )
    experiment = find_experiment("shakespeare")
    pipeline.prepare(experiment, load_config(config, experiment.directory))
    meta = json.loads((folder / "datasets" / "meta.json").read_text(encoding="utf-8"))
    return [entry["path"] for entry in meta["fingerprint"]["inputs"]]


def test_a_file_placed_at_datasets_input_txt_wins_over_the_bundled_text(tmp_path: Path) -> None:
    placed = tmp_path / "datasets" / "input.txt"
    placed.parent.mkdir()
    placed.write_text(OWN_TEXT, encoding="utf-8")

    assert prepared_sources(tmp_path, {}) == [str(placed)]


def test_raw_text_path_wins_over_a_placed_file_and_the_bundled_text(tmp_path: Path) -> None:
    own = tmp_path / "mine.txt"
    own.write_text(OWN_TEXT, encoding="utf-8")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "input.txt").write_text("placed\n" * 500, encoding="utf-8")

    assert prepared_sources(tmp_path, {"prepare.raw_text_path": "mine.txt"}) == [str(own)]
