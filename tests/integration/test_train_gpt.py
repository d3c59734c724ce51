"""Training a tiny char-level GPT in-process: prepare -> train -> checkpoints, logs, resume.

Every run is a real experiment folder in tmp_path (corpus, config.toml, datasets/, out/)
with a model small enough that tens of steps take about a second on one CPU thread.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.data.dataset_meta import read_meta
from ml_playground.digest import content_digest, file_digest
from ml_playground.errors import CheckpointError, DataError
from ml_playground.sample.gpt import load_gpt
from ml_playground.sample.run import sample_texts
from ml_playground.train import reporting
from ml_playground.train.gpt import train_gpt
from ml_playground.train.schedule import learning_rate_at
from tests.cli_helpers import scalar_events, tensors
from tests.experiments import char_gpt, prepare, reconfigure
from tests.toml_helpers import TomlValue


def train(folder: Path, changes: Mapping[str, TomlValue] | None = None) -> Path:
    """Write the tiny experiment with `changes`, prepare it and train; returns out_dir."""
    loaded = char_gpt(folder, changes)
    prepare(loaded)
    return train_gpt(loaded.config).out_dir


def raw_checkpoint(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return loaded


# --- a run from scratch ---------------------------------------------------------------------


def test_training_lowers_the_loss_and_leaves_checkpoints_and_tokenizer_in_out_dir(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "exp"
    loaded = char_gpt(folder, {"train.runtime.eval_only": True})
    prepare(loaded)
    untrained = train_gpt(loaded.config).last_val_loss
    vocab_size = read_meta(folder / "datasets" / "meta.json").vocab_size

    trained = train_gpt(reconfigure(folder).config)

    out_dir = folder / "out"
    assert untrained is not None
    assert trained.last_val_loss is not None
    assert untrained == pytest.approx(math.log(64), abs=0.15), "near uniform over padded vocab"
    assert trained.last_val_loss < untrained - 0.5
    assert trained.last_val_loss < math.log(vocab_size) - 0.5
    assert trained.iter_num == 60
    assert trained.best_val_loss == pytest.approx(trained.last_val_loss)
    assert (out_dir / run_folder.LAST_FILE).is_file()
    assert (out_dir / run_folder.BEST_FILE).is_file()
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == 60
    dataset = read_meta(folder / "datasets" / "meta.json")
    run_meta = run_folder.read_run_meta_of(out_dir, run_folder.GPTRunMeta)
    assert run_meta is not None
    assert (run_meta.tokenizer, run_meta.vocab_size) == (dataset.tokenizer, dataset.vocab_size)
    assert run_meta.dataset_dir == str(folder / "datasets")
    assert run_meta.dataset_sha256 == file_digest(folder / "datasets" / "meta.json")
    # Everything sampling needs is in out_dir: the dataset and the corpus can go.
    shutil.rmtree(folder / "datasets")
    (folder / "input.txt").unlink()
    config = reconfigure(folder).config
    assert sample_texts(config, load_gpt(config))[0].startswith("ROMEO:")


def test_tensorboard_receives_loss_lr_and_speed_scalars(tmp_path: Path) -> None:
    out_dir = train(
        tmp_path / "exp",
        {
            "train.runtime.max_iters": 12,
            "train.runtime.log_interval": 4,
            "train.runtime.eval_interval": 6,
            "train.runtime.tensorboard_enabled": True,
        },
    )

    scalars = scalar_events(out_dir / run_folder.TB_DIR)

    for tag in (
        reporting.TAG_TRAIN_LOSS,
        reporting.TAG_LR,
        reporting.TAG_TOKENS_PER_SEC,
        reporting.TAG_STEP_TIME_MS,
    ):
        assert [step for step, _ in scalars[tag]] == [4, 8, 12], tag
    assert [step for step, _ in scalars[reporting.TAG_VAL_LOSS]] == [6, 12]
    assert all(value > 0 for _, value in scalars[reporting.TAG_TOKENS_PER_SEC])
    assert all(value > 0 for _, value in scalars[reporting.TAG_STEP_TIME_MS])
    # Scalars at step s describe the s-th step, which ran at learning_rate_at(s - 1).
    config = reconfigure(tmp_path / "exp").config.train
    assert [value for _, value in scalars[reporting.TAG_LR]] == pytest.approx(
        [learning_rate_at(step - 1, config.optim, config.schedule) for step in (4, 8, 12)]
    )


def test_eval_only_reports_losses_without_training_or_writing_checkpoints(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.runtime.max_iters": 4})
    saved = {
        name: (out_dir / name).read_bytes() for name in (run_folder.LAST_FILE, run_folder.BEST_FILE)
    }
    fresh = folder / "fresh_out"

    summary = train_gpt(
        reconfigure(folder, {"train.runtime.max_iters": 40, "train.runtime.eval_only": True}).config
    )
    untouched_fresh = train_gpt(
        reconfigure(
            folder, {"train.runtime.eval_only": True, "train.runtime.out_dir": str(fresh)}
        ).config
    )

    assert summary.iter_num == 4
    assert summary.last_val_loss is not None
    assert math.isfinite(summary.last_val_loss)
    assert {name: (out_dir / name).read_bytes() for name in saved} == saved
    assert untouched_fresh.iter_num == 0
    assert not list(fresh.glob("*.pt"))


# --- resuming -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "optimizer"),
    [("random", "adamw"), ("sequential", "adamw"), ("random", "muon")],
    ids=["random", "sequential", "muon"],
)
def test_resume_after_a_shorter_run_matches_the_uninterrupted_run_bit_for_bit(
    tmp_path: Path, sampler: str, optimizer: str
) -> None:
    # Dropout draws from torch's global RNG and two micro-batches feed each step, so this
    # only holds if the checkpoint restores the RNG, the sampler and the optimizer exactly
    # (for Muon both its momentum and AdamW's moments, at their own learning rates).
    # Evaluations at 4 and 8 (and B's extra one at 5) must not disturb any of them.
    changes: dict[str, TomlValue] = {
        "train.model.dropout": 0.1,
        "train.data.grad_accum_steps": 2,
        "train.data.sampler": sampler,
        "train.optim.name": optimizer,
        "train.runtime.max_iters": 12,
        "train.runtime.eval_interval": 4,
    }
    uninterrupted = train(tmp_path / "a", changes)
    train(tmp_path / "b", {**changes, "train.runtime.max_iters": 5})
    resumed = train(tmp_path / "b", changes)

    a = raw_checkpoint(uninterrupted / run_folder.LAST_FILE)
    b = raw_checkpoint(resumed / run_folder.LAST_FILE)
    assert a["iter_num"] == b["iter_num"] == 12
    a_tensors = tensors({key: a[key] for key in ("model", "optimizer", "rng", "sampler")})
    b_tensors = tensors({key: b[key] for key in ("model", "optimizer", "rng", "sampler")})
    assert a_tensors.keys() == b_tensors.keys()
    different = [key for key in a_tensors if not torch.equal(a_tensors[key], b_tensors[key])]
    assert different == []
    if optimizer == "muon":
        assert {"/optimizer/adamw/state/0/exp_avg", "/optimizer/muon/state/0/momentum_buffer"} <= (
            a_tensors.keys()
        )
    assert b["sampler"]["per_rank"][0]["cursor"] == a["sampler"]["per_rank"][0]["cursor"]


def test_resumed_model_shape_comes_from_the_checkpoint_and_the_difference_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.runtime.max_iters": 3})
    capsys.readouterr()

    summary = train_gpt(
        reconfigure(
            folder,
            {"train.model.n_embd": 64, "train.model.n_layer": 3, "train.runtime.max_iters": 5},
        ).config
    )

    stdout = capsys.readouterr().out
    assert "resume: model.n_embd = 32 from the checkpoint (config says 64)" in stdout
    assert "resume: model.n_layer = 2 from the checkpoint (config says 3)" in stdout
    assert "resuming at step 3" in stdout
    assert summary.iter_num == 5
    model_args = checkpoint.load(out_dir / run_folder.LAST_FILE).model_args
    assert (model_args.n_embd, model_args.n_layer) == (32, 2)


def test_a_corrupt_last_checkpoint_stops_training_and_is_left_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.runtime.max_iters": 3})
    last = out_dir / run_folder.LAST_FILE
    last.write_bytes(last.read_bytes()[:1000])
    damaged = last.read_bytes()
    best = (out_dir / run_folder.BEST_FILE).read_bytes()

    with pytest.raises(CheckpointError, match="corrupt") as error:
        train_gpt(reconfigure(folder, {"train.runtime.max_iters": 6}).config)

    assert str(last) in str(error.value)
    assert last.read_bytes() == damaged
    assert (out_dir / run_folder.BEST_FILE).read_bytes() == best
    assert sorted(path.name for path in out_dir.glob("*.pt")) == [
        run_folder.BEST_FILE,
        run_folder.LAST_FILE,
    ]


@pytest.mark.parametrize(
    "retokenize",
    [
        {"other corpus": "0123456789 +-*/=\n" * 200},
        {"tiktoken": ""},
    ],
    ids=["another char vocabulary", "tiktoken"],
)
def test_resuming_on_a_dataset_with_another_tokenizer_names_both(
    tmp_path: Path, retokenize: dict[str, str]
) -> None:
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.runtime.max_iters": 2})
    trained_with = read_meta(folder / "datasets" / "meta.json").tokenizer
    ((kind, text),) = retokenize.items()
    changes: dict[str, TomlValue] = {"train.runtime.max_iters": 4}
    if kind == "tiktoken":
        changes["prepare.tokenizer"] = "tiktoken"
    else:
        (folder / "input.txt").write_text(text, encoding="utf-8")
    loaded = reconfigure(folder, changes)
    prepare(loaded)
    meta_path = folder / "datasets" / "meta.json"
    now = read_meta(meta_path).tokenizer
    assert now != trained_with

    with pytest.raises(CheckpointError) as error:
        train_gpt(loaded.config)

    message = str(error.value)
    assert trained_with.describe() in message
    assert now.describe() in message
    assert str(meta_path) in message
    assert str(out_dir / run_folder.LAST_FILE) in message
    assert checkpoint.load(out_dir / run_folder.LAST_FILE).state.iter_num == 2, "checkpoint kept"


# --- vocabulary size ------------------------------------------------------------------------


def test_a_vocab_size_smaller_than_the_datasets_is_refused_by_train_naming_both(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "exp"
    prepare(char_gpt(folder))
    vocab_size = read_meta(folder / "datasets" / "meta.json").vocab_size

    with pytest.raises(DataError) as error:
        train_gpt(reconfigure(folder, {"train.model.vocab_size": 40}).config)

    message = str(error.value)
    assert "train.model.vocab_size = 40" in message
    assert f"({vocab_size})" in message
    assert not (folder / "out" / run_folder.LAST_FILE).exists()


def test_a_vocab_size_smaller_than_the_tokenizers_is_refused_by_prepare_naming_both(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "exp"

    with pytest.raises(DataError) as error:
        prepare(char_gpt(folder, {"train.model.vocab_size": 40}))

    message = str(error.value)
    assert "train.model.vocab_size = 40" in message
    assert "(58)" in message, "Tiny Shakespeare's first 20,000 characters use 58 symbols"


def test_a_vocab_size_larger_than_the_tokenizers_trains_and_samples_only_known_ids(
    tmp_path: Path,
) -> None:
    # 42 of the 100 ids are unknown to the 58-character tokenizer; after two steps the
    # model still gives them real probability, so unmasked sampling would hit one.
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.model.vocab_size": 100, "train.runtime.max_iters": 2})
    known = set((folder / "input.txt").read_text(encoding="utf-8"))

    config = reconfigure(
        folder,
        {
            "sample.sample.max_new_tokens": 200,
            "sample.sample.temperature": 1.0,
            "sample.sample.top_k": 0,
        },
    ).config
    texts = sample_texts(config, load_gpt(config))

    assert checkpoint.load(out_dir / run_folder.LAST_FILE).model_args.vocab_size == 100
    assert len(texts[0]) == len("ROMEO:") + 200
    assert set(texts[0]) <= known


# --- a damaged training state ---------------------------------------------------------------


def test_an_optimizer_state_that_does_not_fit_stops_the_resume_naming_the_file(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.runtime.max_iters": 2})
    last = out_dir / run_folder.LAST_FILE
    payload = raw_checkpoint(last)
    del payload[checkpoint.DIGEST_KEY]
    payload["optimizer"] = {}
    # Sealed again, so the digest vouches for the damage and the optimizer check meets it.
    torch.save({**payload, checkpoint.DIGEST_KEY: content_digest(payload)}, last)
    before = last.read_bytes()

    with pytest.raises(CheckpointError, match=rf"optimizer state in {last} does not fit"):
        train_gpt(reconfigure(folder, {"train.runtime.max_iters": 4}).config)

    assert last.read_bytes() == before


@pytest.mark.parametrize(("saved_with", "resumed_with"), [("adamw", "muon"), ("muon", "adamw")])
def test_resuming_with_the_other_optimizer_names_the_file_and_leaves_it_untouched(
    tmp_path: Path, saved_with: str, resumed_with: str
) -> None:
    folder = tmp_path / "exp"
    out_dir = train(folder, {"train.runtime.max_iters": 2, "train.optim.name": saved_with})
    last = out_dir / run_folder.LAST_FILE
    before = last.read_bytes()

    with pytest.raises(CheckpointError) as caught:
        train_gpt(
            reconfigure(
                folder, {"train.runtime.max_iters": 4, "train.optim.name": resumed_with}
            ).config
        )

    message = str(caught.value)
    assert "\n" not in message
    assert f"{last} was trained with train.optim.name = '{saved_with}'" in message
    assert f"set name = '{saved_with}' to resume it" in message
    assert last.read_bytes() == before


def test_muon_lowers_the_loss_on_real_text(tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    loaded = char_gpt(folder, {"train.optim.name": "muon", "train.runtime.eval_only": True})
    prepare(loaded)
    untrained = train_gpt(loaded.config).last_val_loss

    trained = train_gpt(reconfigure(folder, {"train.optim.name": "muon"}).config)

    assert untrained is not None
    assert trained.last_val_loss is not None
    # 60 steps take AdamW at lr 1e-2 from 4.16 to about 3.4 here, Muon to about 2.7.
    assert trained.last_val_loss < untrained - 1.0
    saved = checkpoint.load(folder / "out" / run_folder.LAST_FILE).state.optimizer
    assert set(saved) == {"adamw", "muon"}


def test_data_block_size_cuts_the_training_windows_below_the_models_context(
    tmp_path: Path,
) -> None:
    events = {
        "train.runtime.max_iters": 4,
        "train.runtime.log_interval": 1,
        "train.runtime.eval_interval": 2,
        "train.runtime.tensorboard_enabled": True,
    }

    full = train(tmp_path / "full", events)
    cut = train(tmp_path / "cut", {**events, "train.data.block_size": 8})

    # batch_size 8 windows per step: of the model's 32 positions, or of data.block_size's 8.
    for out_dir, window in ((full, 32), (cut, 8)):
        seen = scalar_events(out_dir / run_folder.TB_DIR)[reporting.TAG_TOKENS_SEEN]
        assert seen and seen == [(step, 8 * window * step) for step, _ in seen], out_dir
    assert checkpoint.load(cut / run_folder.LAST_FILE).model_args.block_size == 32
