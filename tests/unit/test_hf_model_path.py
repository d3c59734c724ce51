"""`[train.hf_model] model_name`: a folder path resolves like every path, a hub id stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config_loader import load_config
from tests.toml_helpers import write_toml


def model_name(tmp_path: Path, value: str) -> str:
    experiment = tmp_path / "experiments" / "sft"
    config = write_toml(experiment / "config.toml", {"train.hf_model.model_name": value})
    hf = load_config(config, experiment, defaults_path=None).config.train.hf_model
    assert hf is not None
    return hf.model_name


def test_a_relative_folder_resolves_against_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where the folder is
    (tmp_path / "experiments" / "pretrain" / "export" / "hf").mkdir(parents=True)

    resolved = model_name(tmp_path, "../pretrain/export/hf")

    assert resolved == str(tmp_path / "experiments" / "pretrain" / "export" / "hf")


def test_a_dot_slash_path_resolves_before_the_folder_exists(tmp_path: Path) -> None:
    assert model_name(tmp_path, "./export/hf") == str(
        tmp_path / "experiments" / "sft" / "export" / "hf"
    )


def test_an_existing_folder_without_a_prefix_resolves_too(tmp_path: Path) -> None:
    (tmp_path / "experiments" / "sft" / "export" / "hf").mkdir(parents=True)

    assert model_name(tmp_path, "export/hf") == str(
        tmp_path / "experiments" / "sft" / "export" / "hf"
    )


def test_a_hub_id_stays_as_written(tmp_path: Path) -> None:
    assert model_name(tmp_path, "Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
