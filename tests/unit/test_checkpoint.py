"""Checkpoints: safe round trips, clear errors for damaged files, atomic saves, which to sample."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.checkpoint import Checkpoint, TrainingState
from ml_playground.data.tokenizer import CharTokenizer
from ml_playground.device import capture_rng, restore_rng
from ml_playground.digest import content_digest
from ml_playground.errors import CheckpointError
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from tests.cli_helpers import assert_refused_as_another_format

TINY = GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8)


def trained_checkpoint(iter_num: int = 3) -> Checkpoint:
    """A real checkpoint of a tiny GPT after `iter_num` optimizer steps."""
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    model = GPT(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    tokens = torch.randint(TINY.vocab_size, (2, TINY.block_size + 1))
    for _ in range(iter_num):
        loss = model(tokens[:, :-1], tokens[:, 1:])
        torch.autograd.backward(loss)
        optimizer.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves `closure` unannotated
        optimizer.zero_grad(set_to_none=True)
    return Checkpoint(
        model=model.state_dict(),
        state=TrainingState(
            iter_num=iter_num,
            best_val_loss=2.5,
            optimizer=optimizer.state_dict(),
            scaler=None,
            rng=[capture_rng()],
            sampler=[{"generator": torch.Generator().manual_seed(7).get_state(), "cursor": 4}],
        ),
        model_args=TINY,
        config={"train": {"runtime": {"max_iters": 10}}},
        tokenizer=CharTokenizer(list("abcdefghijkl")).spec,
    )


def save_payload(path: Path, payload: dict[str, Any]) -> Path:
    """Write a payload as given, sealed with its digest, bypassing `checkpoint.save`'s checks."""
    torch.save({**payload, checkpoint.DIGEST_KEY: content_digest(payload)}, path)
    return path


# --- round trip -----------------------------------------------------------------------------


def test_saved_checkpoint_loads_back_equal_with_weights_only(tmp_path: Path) -> None:
    original = trained_checkpoint()
    path = tmp_path / run_folder.LAST_FILE

    checkpoint.save(path, original)
    loaded = checkpoint.load(path)

    assert loaded.model.keys() == original.model.keys()
    assert all(torch.equal(loaded.model[key], original.model[key]) for key in original.model)
    saved, restored = original.state, loaded.state
    for index, state in saved.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(restored.optimizer["state"][index][name], value)
    assert restored.optimizer["param_groups"] == saved.optimizer["param_groups"]
    assert restored.iter_num == saved.iter_num
    assert restored.best_val_loss == saved.best_val_loss
    assert loaded.model_args == TINY
    assert loaded.tokenizer == original.tokenizer
    assert dict(loaded.config) == dict(original.config)
    assert torch.equal(restored.rng[0]["torch"], saved.rng[0]["torch"])
    assert torch.equal(restored.sampler[0]["generator"], saved.sampler[0]["generator"])
    assert restored.sampler[0]["cursor"] == 4
    # Only tensors and plain containers: the file is readable without unpickling code.
    assert isinstance(torch.load(path, map_location="cpu", weights_only=True), dict)


def test_loaded_weights_rebuild_the_same_model(tmp_path: Path) -> None:
    original = trained_checkpoint()
    path = tmp_path / run_folder.LAST_FILE
    checkpoint.save(path, original)
    tokens = torch.arange(TINY.block_size)[None, :]

    loaded = checkpoint.load(path)
    model = GPT(loaded.model_args)
    model.load_state_dict(dict(loaded.model))
    reference = GPT(TINY)
    reference.load_state_dict(dict(original.model))

    assert torch.equal(model.eval()(tokens), reference.eval()(tokens))


def test_captured_rng_replays_the_same_random_draws() -> None:
    state = capture_rng()
    first = torch.rand(5)

    restore_rng(state)

    assert torch.equal(torch.rand(5), first)


# --- torch.compile prefix -------------------------------------------------------------------


def compiled_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{checkpoint.COMPILED_PREFIX}{key}": value for key, value in state.items()}


def test_save_strips_the_compile_prefix(tmp_path: Path) -> None:
    original = trained_checkpoint()
    compiled = dataclasses.replace(original, model=compiled_keys(dict(original.model)))
    path = tmp_path / run_folder.LAST_FILE

    checkpoint.save(path, compiled)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["model"]) == set(original.model)


def test_load_strips_the_compile_prefix_of_a_file_that_carries_it(tmp_path: Path) -> None:
    original = trained_checkpoint()
    payload = original.payload()
    payload["model"] = compiled_keys(payload["model"])
    path = save_payload(tmp_path / run_folder.LAST_FILE, payload)

    loaded = checkpoint.load(path)

    assert set(loaded.model) == set(original.model)
    model = GPT(TINY)
    model.load_state_dict(dict(loaded.model))  # strict: every key matches


# --- damaged and foreign files --------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_a_checkpoint_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / run_folder.LAST_FILE
    checkpoint.save(path, trained_checkpoint())
    data = path.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "garbage": b"this is not a checkpoint\n" * 10,
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)

    with pytest.raises(CheckpointError, match="corrupt") as error:
        checkpoint.load(path)

    assert str(path) in str(error.value)


def test_a_missing_file_is_a_checkpoint_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / run_folder.LAST_FILE

    with pytest.raises(CheckpointError, match="not found") as error:
        checkpoint.load(path)

    assert str(path) in str(error.value)


def test_a_file_holding_no_dictionary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / run_folder.LAST_FILE
    torch.save(torch.zeros(3), path)

    with pytest.raises(CheckpointError, match="not a dictionary") as error:
        checkpoint.load(path)

    assert str(path) in str(error.value)


@pytest.mark.parametrize("version", [None, 0, checkpoint.GPT_FORMAT_VERSION + 1])
def test_another_format_version_is_refused_naming_file_and_versions(
    tmp_path: Path, version: int | None
) -> None:
    payload = trained_checkpoint().payload()
    if version is None:
        del payload["format_version"]
    else:
        payload["format_version"] = version
    path = save_payload(tmp_path / run_folder.LAST_FILE, payload)

    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path)

    message = str(error.value)
    assert str(path) in message
    assert f"format_version {version!r}" in message
    assert f"expected {checkpoint.GPT_FORMAT_VERSION}" in message
    assert_refused_as_another_format(message, path)


def test_a_file_without_its_digest_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / run_folder.LAST_FILE
    torch.save(trained_checkpoint().payload(), path)  # the format without a digest
    before = path.read_bytes()

    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path)

    assert "holds no sha256 digest" in str(error.value)
    assert_refused_as_another_format(str(error.value), path)
    assert path.read_bytes() == before


def test_missing_keys_are_refused_and_named(tmp_path: Path) -> None:
    payload = trained_checkpoint().payload()
    del payload["optimizer"]
    del payload["tokenizer"]
    path = save_payload(tmp_path / run_folder.LAST_FILE, payload)

    with pytest.raises(CheckpointError) as error:
        checkpoint.load(path)

    message = str(error.value)
    assert str(path) in message
    assert "lacks optimizer, tokenizer" in message


# --- atomic saves ---------------------------------------------------------------------------


def test_save_leaves_only_the_checkpoint_behind(tmp_path: Path) -> None:
    checkpoint.save(tmp_path / run_folder.LAST_FILE, trained_checkpoint())
    checkpoint.save(tmp_path / run_folder.LAST_FILE, trained_checkpoint(iter_num=4))

    assert [path.name for path in tmp_path.iterdir()] == [run_folder.LAST_FILE]
    assert checkpoint.load(tmp_path / run_folder.LAST_FILE).state.iter_num == 4


def fail_while_serializing(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_save(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)


def fail_while_writing_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)


@pytest.mark.parametrize("interrupt", [fail_while_serializing, fail_while_writing_the_file])
def test_an_interrupted_save_keeps_the_previous_checkpoint_intact(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    interrupt: Callable[[pytest.MonkeyPatch], None],
) -> None:
    path = tmp_path / run_folder.LAST_FILE
    checkpoint.save(path, trained_checkpoint(iter_num=3))
    before = path.read_bytes()
    newer = trained_checkpoint(iter_num=4)
    interrupt(monkeypatch)

    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, newer)

    monkeypatch.undo()
    assert path.read_bytes() == before
    assert checkpoint.load(path).state.iter_num == 3
    assert [entry.name for entry in tmp_path.iterdir()] == [run_folder.LAST_FILE], "no temp files"


# --- which checkpoint sampling reads --------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (
            (run_folder.BEST_FILE, run_folder.LAST_FILE, run_folder.LEGACY_FILE),
            run_folder.BEST_FILE,
        ),
        ((run_folder.LAST_FILE, run_folder.LEGACY_FILE), run_folder.LAST_FILE),
        ((run_folder.BEST_FILE, run_folder.LEGACY_FILE), run_folder.BEST_FILE),
        ((run_folder.LEGACY_FILE,), run_folder.LEGACY_FILE),
    ],
)
def test_sampling_reads_best_then_last_then_legacy(
    tmp_path: Path, present: tuple[str, ...], chosen: str
) -> None:
    for name in present:
        (tmp_path / name).write_bytes(b"")

    assert run_folder.gpt_for_sampling(tmp_path) == tmp_path / chosen


def test_no_checkpoint_to_sample_names_out_dir_and_the_files_looked_for(tmp_path: Path) -> None:
    (tmp_path / "ckpt_other.pt").write_bytes(b"")

    with pytest.raises(CheckpointError) as error:
        run_folder.gpt_for_sampling(tmp_path)

    message = str(error.value)
    assert str(tmp_path) in message
    for name in (run_folder.BEST_FILE, run_folder.LAST_FILE, run_folder.LEGACY_FILE):
        assert name in message


# --- one run per out_dir ----------------------------------------------------------------------


def test_the_out_dir_lock_is_refused_while_held_and_released_after(tmp_path: Path) -> None:
    with (
        run_folder.out_dir_lock(tmp_path),
        pytest.raises(CheckpointError, match="in use"),
        run_folder.out_dir_lock(tmp_path),
    ):
        pass

    assert not (tmp_path / run_folder.LOCK_FILE).exists()


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    (tmp_path / run_folder.LOCK_FILE).write_text(gone.stdout, encoding="utf-8")

    with run_folder.out_dir_lock(tmp_path):
        assert (tmp_path / run_folder.LOCK_FILE).read_text(encoding="utf-8").strip() == str(
            os.getpid()
        )


def test_an_out_dir_that_is_a_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")

    with (
        pytest.raises(CheckpointError, match=r"out_dir .*run \(or a folder above it\) is a file"),
        run_folder.out_dir_lock(tmp_path / "out" / "run"),
    ):
        pass


# --- structurally wrong files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("iter_num", "12", "has iter_num '12', not a step"),
        ("iter_num", -1, "has iter_num -1, not a step"),
        ("best_val_loss", "low", "has best_val_loss 'low', not a number"),
        ("optimizer", [], "holds no optimizer state"),
    ],
)
def test_a_checkpoint_with_a_wrong_field_is_one_error_naming_the_file(
    tmp_path: Path, key: str, value: object, problem: str
) -> None:
    payload = trained_checkpoint().payload()
    payload[key] = value
    path = save_payload(tmp_path / run_folder.LAST_FILE, payload)

    with pytest.raises(CheckpointError, match=problem) as error:
        checkpoint.load(path)

    assert str(path) in str(error.value)


def test_weights_that_do_not_fit_the_model_args_are_one_error_naming_the_file(
    tmp_path: Path,
) -> None:
    payload = trained_checkpoint().payload()
    del payload["model"]["lm_head.weight"]
    path = save_payload(tmp_path / run_folder.LAST_FILE, payload)
    loaded = checkpoint.load(path)

    with pytest.raises(CheckpointError, match=r"do not fit its model_args \(Missing key"):
        checkpoint.load_weights(GPT(loaded.model_args), loaded.model, path)
