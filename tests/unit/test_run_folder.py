"""The run folder: one slot table and one sampling order for GPT checkpoints and adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground import run_folder
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.errors import CheckpointError
from ml_playground.run_folder import Slot
from tests.cli_helpers import assert_refused_as_another_format


def test_the_original_design_file_names_stay_on_disk(tmp_path: Path) -> None:
    assert run_folder.checkpoint_file(tmp_path, run_folder.BEST) == tmp_path / "ckpt_best.pt"
    assert run_folder.checkpoint_file(tmp_path, run_folder.LAST) == tmp_path / "ckpt_last.pt"
    for slot in ("best", "last", "final"):
        assert run_folder.adapters_dir(tmp_path, slot) == tmp_path / "adapters" / slot
    assert run_folder.tensorboard_dir(tmp_path) == tmp_path / "logs" / "tb"


def test_a_gpt_keeps_its_final_slot_in_ckpt_last_written_once(tmp_path: Path) -> None:
    assert run_folder.checkpoint_file(tmp_path, run_folder.FINAL) == tmp_path / "ckpt_last.pt"
    last = tmp_path / "ckpt_last.pt"
    assert run_folder.checkpoint_files(tmp_path, run_folder.END_SLOTS) == [last]
    assert run_folder.checkpoint_files(tmp_path, (run_folder.BEST, run_folder.LAST)) == [
        tmp_path / "ckpt_best.pt",
        tmp_path / "ckpt_last.pt",
    ]


@pytest.mark.parametrize(
    ("present", "picked"),
    [
        (("ckpt_best.pt", "ckpt_last.pt", "ckpt.pt"), "ckpt_best.pt"),
        (("ckpt_last.pt", "ckpt.pt"), "ckpt_last.pt"),
        (("ckpt.pt",), "ckpt.pt"),
    ],
)
def test_gpt_sampling_follows_the_one_order_then_the_original_ckpt_pt(
    tmp_path: Path, present: tuple[str, ...], picked: str
) -> None:
    for name in present:
        (tmp_path / name).write_bytes(b"")

    assert run_folder.gpt_for_sampling(tmp_path) == tmp_path / picked


def test_no_checkpoint_is_one_error_naming_every_name_looked_for(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        run_folder.gpt_for_sampling(tmp_path)

    assert f"no checkpoint in {tmp_path} (looked for ckpt_best.pt, ckpt_last.pt, ckpt.pt)" in str(
        error.value
    )


def test_the_sampling_order_is_best_final_last_for_both_backends() -> None:
    order: tuple[Slot, ...] = ("best", "final", "last")
    assert order == run_folder.SAMPLING_ORDER


@pytest.mark.parametrize(
    "saved", ["ckpt_best.pt", "ckpt_last.pt", "ckpt.pt", "adapters/best", "adapters/final"]
)
def test_list_calls_a_run_trained_when_any_slot_holds_weights(tmp_path: Path, saved: str) -> None:
    assert not run_folder.holds_weights(tmp_path)
    target = tmp_path / saved
    if saved.startswith("adapters"):
        target.mkdir(parents=True)
    else:
        target.write_bytes(b"")

    assert run_folder.holds_weights(tmp_path)


# --- run meta: one schema for both backends -------------------------------------------------

GPT_META = run_folder.GPTRunMeta(
    tokenizer=TokenizerSpec(kind="tiktoken", encoding="gpt2"),
    vocab_size=50257,
    dataset_dir="/data/shakespeare",
    dataset_sha256="0" * 64,
)


def test_a_gpt_run_meta_reads_back_as_written_and_says_its_kind(tmp_path: Path) -> None:
    run_folder.write_run_meta(tmp_path, GPT_META)

    assert json.loads(run_folder.meta_file(tmp_path).read_text(encoding="utf-8"))["kind"] == "gpt"
    assert run_folder.read_run_meta(tmp_path) == GPT_META
    assert run_folder.read_run_meta_of(tmp_path, run_folder.GPTRunMeta) == GPT_META


def test_a_folder_without_meta_json_has_no_run_meta(tmp_path: Path) -> None:
    assert run_folder.read_run_meta(tmp_path) is None
    assert run_folder.read_run_meta_of(tmp_path, run_folder.HFRunMeta) is None


def test_a_meta_json_without_a_kind_is_refused_naming_the_file_and_train_fresh(
    tmp_path: Path,
) -> None:
    # What a GPT run wrote before run meta had a schema: a copy of its dataset's meta.
    path = run_folder.meta_file(tmp_path)
    old = {"format_version": 1, "tokenizer": GPT_META.tokenizer.to_json(), "vocab_size": 50257}
    path.write_text(json.dumps(old), encoding="utf-8")
    before = path.read_bytes()

    with pytest.raises(CheckpointError) as refused:
        run_folder.read_run_meta(tmp_path)

    assert_refused_as_another_format(str(refused.value), path)
    assert path.read_bytes() == before


def test_a_run_meta_of_the_other_backend_is_an_error_naming_both(tmp_path: Path) -> None:
    run_folder.write_run_meta(tmp_path, GPT_META)

    with pytest.raises(CheckpointError) as refused:
        run_folder.read_run_meta_of(tmp_path, run_folder.HFRunMeta)

    message = str(refused.value)
    assert message.startswith(f"{run_folder.meta_file(tmp_path)} describes a from-scratch GPT run")
    assert "the config's run is a fine-tuning one" in message
