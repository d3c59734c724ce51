"""A dataset folder of an older meta.json format, as the CLI meets it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.data.dataset_folder import META_FILE
from tests.cli_helpers import Cli, assert_one_error_line, sha256_of_files
from tests.experiments import char_gpt, prepare


@pytest.mark.parametrize(
    "older",
    [
        # The text corpus meta of format_version 1.
        {"format_version": 1, "dtype": "uint16", "train_tokens": 1, "val_tokens": 1},
        # The records meta of format_version 2.
        {"format_version": 2, "base_model": "tiny", "tokenizer": "tokenizer", "masked": False},
    ],
    ids=["corpus-v1", "records-v2"],
)
def test_a_folder_of_an_older_format_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path, older: dict[str, object], bytecode_cache: Path
) -> None:
    folder = tmp_path.resolve()
    loaded = char_gpt(folder)
    prepare(loaded)
    dataset_dir = loaded.config.prepare.dataset_dir
    (dataset_dir / META_FILE).write_text(json.dumps(older), encoding="utf-8")
    before = sha256_of_files(dataset_dir)

    line = assert_one_error_line(
        Cli(tmp_path, bytecode_cache=bytecode_cache).run("inspect", str(folder))
    )

    assert f"{dataset_dir} was prepared by an older version" in line
    assert f"format_version {older['format_version']}" in line
    assert f"ml-playground prepare {folder} --force" in line  # the CLI names the experiment
    assert sha256_of_files(dataset_dir) == before
