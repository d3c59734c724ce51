"""The out_dir of a fine-tuning run: which adapters sampling picks, and damaged state."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.errors import CheckpointError
from ml_playground.finetune import adapters
from ml_playground.finetune.adapters import RunMeta, for_sampling, load_state


def make(out_dir: Path, *names: str) -> None:
    for name in names:
        adapters.adapters_dir(out_dir, name).mkdir(parents=True)


@pytest.mark.parametrize(
    ("present", "picked"),
    [
        (("best", "final", "last"), "best"),
        (("final", "last"), "final"),
        (("last",), "last"),
    ],
)
def test_sampling_takes_best_else_final_else_last(
    tmp_path: Path, present: tuple[str, ...], picked: str
) -> None:
    make(tmp_path, *present)

    assert for_sampling(tmp_path) == adapters.adapters_dir(tmp_path, picked)


def test_no_adapters_means_none(tmp_path: Path) -> None:
    assert for_sampling(tmp_path) is None


def test_damaged_training_state_is_an_error_saying_how_to_start_fresh(tmp_path: Path) -> None:
    folder = adapters.adapters_dir(tmp_path, adapters.LAST)
    folder.mkdir(parents=True)
    (folder / adapters.STATE_FILE).write_bytes(b"not a torch file")

    with pytest.raises(
        CheckpointError, match=rf"is damaged .*delete {folder} to train from scratch"
    ):
        load_state(folder)


def test_run_meta_round_trips_and_a_foreign_file_is_an_error(tmp_path: Path) -> None:
    meta = RunMeta(
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        vocab_size=151667,
        structure_tokens=("<SPEECH_START>", "<SPEECH_END>"),
        added_tokens=(),
        doc_separator="",
        lora=True,
    )
    meta.write(tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"kind": "gpt"}', encoding="utf-8")

    assert RunMeta.read(tmp_path / "run") == meta
    with pytest.raises(CheckpointError, match=r"is not the meta\.json of a fine-tuning run"):
        RunMeta.read(tmp_path / "other")
