"""The out_dir of a fine-tuning run: which adapters sampling picks, training state files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.checkpoint import TrainingState, load_state
from ml_playground.errors import CheckpointError
from ml_playground.run_folder import HFRunMeta, Slot, adapters_for_sampling, read_run_meta_of
from tests.cli_helpers import assert_refused_as_another_format


def make(out_dir: Path, *names: Slot) -> None:
    for name in names:
        run_folder.adapters_dir(out_dir, name).mkdir(parents=True)


@pytest.mark.parametrize(
    ("present", "picked"),
    [
        (("best", "final", "last"), "best"),
        (("final", "last"), "final"),
        (("last",), "last"),
    ],
)
def test_sampling_takes_best_else_final_else_last(
    tmp_path: Path, present: tuple[Slot, ...], picked: Slot
) -> None:
    make(tmp_path, *present)

    assert adapters_for_sampling(tmp_path) == run_folder.adapters_dir(tmp_path, picked)


def test_no_adapters_means_none(tmp_path: Path) -> None:
    assert adapters_for_sampling(tmp_path) is None


def test_damaged_training_state_is_an_error_saying_how_to_start_fresh(tmp_path: Path) -> None:
    folder = run_folder.adapters_dir(tmp_path, run_folder.LAST)
    folder.mkdir(parents=True)
    (folder / checkpoint.STATE_FILE).write_bytes(b"not a torch file")

    with pytest.raises(
        CheckpointError, match=rf"is damaged .*delete {folder} to train from scratch"
    ):
        load_state(folder)


def test_run_meta_round_trips_and_a_foreign_file_is_an_error(tmp_path: Path) -> None:
    meta = HFRunMeta(
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        vocab_size=151667,
        structure_tokens=("<SPEECH_START>", "<SPEECH_END>"),
        added_tokens=(),
        doc_separator="",
        record_opening="<SPEECH_START>\n",
        record_closing="<SPEECH_END>",
        stop_tokens=("<SPEECH_END>",),
        lora=True,
    )
    run_folder.write_run_meta(tmp_path / "run", meta)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"kind": "gpt"}', encoding="utf-8")

    assert read_run_meta_of(tmp_path / "run", HFRunMeta) == meta
    with pytest.raises(CheckpointError, match=r"is not a valid meta\.json of a from-scratch GPT"):
        read_run_meta_of(tmp_path / "other", HFRunMeta)


def test_run_meta_without_its_record_shape_is_refused_naming_the_field(tmp_path: Path) -> None:
    fields: dict[str, object] = {
        "kind": "hf-finetune",
        "base_model": "tiny",
        "revision": None,
        "vocab_size": 10,
        "added_tokens": [],
        "doc_separator": "",
        "lora": True,
    }
    for name, structure in (("speeches", ["<SPEECH_START>", "<SPEECH_END>"]), ("plain", [])):
        (tmp_path / name).mkdir()
        written = {**fields, "structure_tokens": structure}
        (tmp_path / name / "meta.json").write_text(json.dumps(written), encoding="utf-8")

    for name in ("speeches", "plain"):
        with pytest.raises(CheckpointError) as raised:
            read_run_meta_of(tmp_path / name, HFRunMeta)
        message = str(raised.value)
        assert f"{tmp_path / name / 'meta.json'}" in message
        assert "'record_opening' field required" in message
        assert "ml-playground train --fresh <experiment>" in message


def stream(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def test_training_state_keeps_every_ranks_sampler_and_rng_in_rank_order(tmp_path: Path) -> None:
    folder = run_folder.adapters_dir(tmp_path, run_folder.LAST)
    folder.mkdir(parents=True)
    state = TrainingState(
        iter_num=6,
        best_val_loss=2.5,
        optimizer={"state": {}, "param_groups": []},
        scaler=None,
        rng=[{"torch": stream(10)}, {"torch": stream(11)}],
        sampler=[{"generator": stream(0), "cursor": 3}, {"generator": stream(1), "cursor": 3}],
        trainable=("lora_A", "lora_B"),
    )
    checkpoint.save_adapters(tmp_path, run_folder.LAST, lambda folder: None, state)

    loaded = load_state(folder)
    raw = torch.load(folder / checkpoint.STATE_FILE, weights_only=True)

    assert len(raw["sampler"]["per_rank"]) == len(raw["rng"]["per_rank"]) == 2  # as ckpt_*.pt
    for rank in (0, 1):
        assert torch.equal(loaded.sampler[rank]["generator"], stream(rank))
        assert torch.equal(loaded.rng[rank]["torch"], stream(10 + rank))
    assert (loaded.iter_num, loaded.trainable) == (6, ("lora_A", "lora_B"))


def test_a_state_of_another_version_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    folder = run_folder.adapters_dir(tmp_path, run_folder.LAST)
    folder.mkdir(parents=True)
    version_1: dict[str, object] = {
        "version": 1,
        "iter_num": 4,
        "best_val_loss": 3.0,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": None,
        "rng": {"torch": stream(10)},
        "sampler": {"generator": stream(0), "cursor": 2},
        "trainable": ["lora_A"],
    }
    path = folder / checkpoint.STATE_FILE
    torch.save(version_1, path)
    before = path.read_bytes()

    with pytest.raises(CheckpointError) as error:
        load_state(folder)

    expected = checkpoint.STATE_FORMAT_VERSION
    assert f"has version 1, expected {expected}" in str(error.value)
    assert_refused_as_another_format(str(error.value), path)
    assert path.read_bytes() == before


def test_adapters_without_their_integrity_file_are_refused_in_one_line(tmp_path: Path) -> None:
    folder = run_folder.adapters_dir(tmp_path, run_folder.BEST)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")

    with pytest.raises(CheckpointError) as error:
        checkpoint.verify_adapters(folder)

    assert f"hold no {checkpoint.INTEGRITY_FILE}" in str(error.value)
    assert_refused_as_another_format(str(error.value), folder)
    assert sorted(path.name for path in folder.iterdir()) == ["adapter_config.json"]


def test_a_training_state_missing_a_field_is_an_error_naming_it_and_the_folder(
    tmp_path: Path,
) -> None:
    folder = run_folder.adapters_dir(tmp_path, run_folder.LAST)
    folder.mkdir(parents=True)
    torch.save(
        {"version": 2, "best_val_loss": 3.0, "optimizer": {}}, folder / checkpoint.STATE_FILE
    )

    with pytest.raises(CheckpointError, match=rf"lacks iter_num; delete {folder}"):
        load_state(folder)


def test_an_adapters_folder_without_its_state_is_not_a_fresh_start(tmp_path: Path) -> None:
    folder = run_folder.adapters_dir(tmp_path, run_folder.LAST)

    assert checkpoint.resumable_state(folder) is None  # no run yet
    folder.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=rf"{folder} holds no training_state\.pt"):
        checkpoint.resumable_state(folder)
