"""Sampling from a trained tiny GPT in-process: reproducible text, prompts, saved samples,
the batch of num_samples and what it streams.

One tiny model is trained per test module; each test gets a fresh experiment folder that
holds only a copy of its out_dir (no corpus, no dataset), which is all sampling may need.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from ml_playground import run_folder
from ml_playground.errors import CheckpointError, DataError
from ml_playground.run_folder import SAMPLES_DIR
from ml_playground.sample.gpt import load_gpt
from ml_playground.sample.run import sample_texts
from ml_playground.train.gpt import train_gpt
from tests.experiments import char_gpt, prepare, reconfigure
from tests.toml_helpers import TomlValue


@pytest.fixture(scope="module")
def trained_out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    loaded = char_gpt(folder, {"train.runtime.max_iters": 40})
    prepare(loaded)
    return train_gpt(loaded.config).out_dir


@pytest.fixture
def folder(tmp_path: Path, trained_out_dir: Path) -> Path:
    """An experiment folder with the trained out_dir and nothing else."""
    experiment = tmp_path / "exp"
    shutil.copytree(trained_out_dir, experiment / "out")
    return experiment


def sample(folder: Path, changes: Mapping[str, TomlValue] | None = None) -> list[str]:
    config = reconfigure(folder, changes).config
    return sample_texts(config, load_gpt(config))


def test_sampling_needs_only_out_dir(folder: Path) -> None:
    assert sorted(path.name for path in folder.iterdir()) == ["out"]

    texts = sample(folder)

    assert len(texts) == 1
    assert texts[0].startswith("ROMEO:")
    assert len(texts[0]) == len("ROMEO:") + 24


def test_the_same_seed_gives_the_same_text_and_another_seed_other_text(folder: Path) -> None:
    settings: dict[str, TomlValue] = {
        "sample.sample.temperature": 1.0,
        "sample.sample.max_new_tokens": 64,
    }

    first = sample(folder, {**settings, "train.runtime.seed": 7})
    again = sample(folder, {**settings, "train.runtime.seed": 7})
    other = sample(folder, {**settings, "train.runtime.seed": 8})

    assert first == again
    assert first != other


def test_temperature_zero_is_greedy_and_ignores_the_seed(folder: Path) -> None:
    greedy: dict[str, TomlValue] = {"sample.sample.temperature": 0.0}

    first = sample(folder, {**greedy, "train.runtime.seed": 1})
    second = sample(folder, {**greedy, "train.runtime.seed": 2})

    assert first == second


def test_samples_are_saved_under_out_dir_samples(folder: Path) -> None:
    texts = sample(folder, {"sample.sample.num_samples": 2})

    saved = sorted((folder / "out" / SAMPLES_DIR).glob("*.txt"))
    assert [path.read_text(encoding="utf-8") for path in saved] == texts
    assert len(texts) == 2


def test_streamed_samples_appear_on_stdout_and_the_checkpoint_used_on_stderr(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = sample(folder, {"sample.sample.stream": True})

    captured = capsys.readouterr()
    assert f"sampling from {folder / 'out' / run_folder.BEST_FILE}" in captured.err
    assert captured.out == texts[0] + "\n"


def test_greedy_samples_of_a_batch_equal_the_greedy_single_sample(folder: Path) -> None:
    greedy: dict[str, TomlValue] = {"sample.sample.temperature": 0.0}

    [single] = sample(folder, greedy)
    batch = sample(folder, {**greedy, "sample.sample.num_samples": 3})

    assert batch == [single] * 3


def test_a_seeded_batch_repeats_exactly_and_its_samples_differ(folder: Path) -> None:
    settings: dict[str, TomlValue] = {
        "sample.sample.temperature": 1.0,
        "sample.sample.max_new_tokens": 64,
        "sample.sample.num_samples": 3,
    }

    first = sample(folder, settings)

    assert sample(folder, settings) == first
    assert len(set(first)) == 3


@pytest.mark.parametrize("stream", [True, False])
def test_stdout_holds_only_the_samples_a_blank_line_apart_and_stderr_the_status_in_order(
    folder: Path, capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    texts = sample(
        folder,
        {"sample.sample.stream": stream, "sample.sample.num_samples": 3, "train.runtime.seed": 3},
    )

    captured = capsys.readouterr()
    assert captured.out == "\n\n".join(texts) + "\n"
    saved = sorted((folder / "out" / SAMPLES_DIR).glob("*.txt"))
    status = captured.err.splitlines()
    assert status[1:-1] == [
        line
        for index, path in enumerate(saved)
        for line in (f"--- sample {index + 1}/3 ---", f"--- saved {path} ---")
    ]
    assert status[-1].startswith("speed: prompt ")  # how fast the batch came, last


def test_a_file_prompt_is_read_relative_to_the_config(folder: Path) -> None:
    (folder / "prompt.txt").write_text("JULIET:\nO Romeo", encoding="utf-8")

    texts = sample(folder, {"sample.sample.start": "FILE:prompt.txt"})

    assert texts[0].startswith("JULIET:\nO Romeo")


def test_a_missing_prompt_file_is_a_data_error_naming_it(folder: Path) -> None:
    with pytest.raises(DataError) as error:
        sample(folder, {"sample.sample.start": "FILE:prompts/missing.txt"})

    assert str(folder / "prompts" / "missing.txt") in str(error.value)
    assert not (folder / "out" / SAMPLES_DIR).exists()


def test_a_prompt_character_outside_the_char_vocabulary_is_a_data_error(folder: Path) -> None:
    with pytest.raises(DataError) as error:
        sample(folder, {"sample.sample.start": "ROMEO: ☃"})

    assert "'☃'" in str(error.value)
    assert "vocabulary" in str(error.value)


def test_sampling_reads_the_last_checkpoint_when_there_is_no_best(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "out" / run_folder.BEST_FILE).unlink()

    sample(folder)

    assert f"sampling from {folder / 'out' / run_folder.LAST_FILE}" in capsys.readouterr().err


def test_no_checkpoint_is_a_checkpoint_error_naming_out_dir(tmp_path: Path) -> None:
    empty = tmp_path / "exp"

    with pytest.raises(CheckpointError) as error:
        sample(empty)

    assert f"no checkpoint in {empty / 'out'}" in str(error.value)


def test_bfloat16_sampling_runs_on_bfloat16_weights_and_is_reproducible(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: dict[str, TomlValue] = {
        "train.runtime.dtype": "bfloat16",
        "sample.sample.temperature": 1.0,
        "sample.sample.max_new_tokens": 32,
    }

    first = sample(folder, settings)
    again = sample(folder, settings)

    assert "in bfloat16" in capsys.readouterr().err
    assert first == again
    assert first[0].startswith("ROMEO:")
    assert len(first[0]) == len("ROMEO:") + 32
