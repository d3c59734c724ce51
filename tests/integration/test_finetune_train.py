"""LoRA fine-tuning of tiny local models: adapters, exact resume, EOS, sampling, merging.

In-process: prepare -> train -> sample through the finetune package, with the tiny Qwen2
and Gemma3 models of tests/finetune_helpers.py as `model_name`, on CPU in float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import pytest
import torch

from ml_playground import checkpoint, run_folder
from ml_playground.config import ExperimentConfig
from ml_playground.config_loader import LoadedConfig
from ml_playground.errors import CheckpointError, ConfigError, DataError
from ml_playground.finetune.loss import plain_next_token_loss
from ml_playground.sample.hf import load_hf, load_trained
from ml_playground.sample.run import sample_texts
from ml_playground.train.hf import train_lora
from ml_playground.train.reporting import (
    TAG_LR,
    TAG_STEP_TIME_MS,
    TAG_TOKENS_PER_SEC,
    TAG_TRAIN_LOSS,
    TAG_VAL_LOSS,
)
from tests.experiments import load, lora_settings, prepare_speech_records, speeches_lora
from tests.finetune_helpers import ADAPTER_FILE, Family, TinyModels, adapter_weights
from tests.toml_helpers import TomlValue


def experiment(
    root: Path,
    tiny_models: TinyModels,
    overrides: Mapping[str, TomlValue] | None = None,
    *,
    family: Family = "qwen2",
) -> LoadedConfig:
    """A prepared SpeakGer-style experiment in `root` (preparing again is a no-op)."""
    return speeches_lora(root, tiny_models.of(family), overrides)


def sample_lora(config: ExperimentConfig) -> list[str]:
    return sample_texts(config, load_hf(config))


def test_training_writes_best_last_final_adapters_tokenizer_and_meta(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = experiment(tmp_path, tiny_models)
    out_dir = loaded.config.train.runtime.out_dir

    summary = train_lora(loaded.config)

    assert summary.iter_num == 6
    for name in (run_folder.BEST, run_folder.LAST, run_folder.FINAL):
        folder = run_folder.adapters_dir(out_dir, name)
        assert (folder / ADAPTER_FILE).is_file()
        assert checkpoint.load_state(folder).iter_num in {3, 6}
    assert checkpoint.load_state(run_folder.adapters_dir(out_dir, run_folder.FINAL)).iter_num == 6
    assert (out_dir / "tokenizer" / "tokenizer.json").is_file()
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["base_model"] == str(tiny_models.qwen2)
    assert meta["structure_tokens"] == ["<SPEECH_START>", "<SPEECH_END>"]
    hf = loaded.config.train.hf_model
    assert hf is not None
    trained = load_trained(out_dir, hf, dtype=torch.float32, require_adapters=True)
    assert trained.weights == run_folder.adapters_dir(out_dir, run_folder.BEST)


def test_resume_after_a_stop_matches_the_uninterrupted_run_exactly(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    # Dropout on the adapters and random windows: exactness needs every RNG restored.
    settings: dict[str, TomlValue] = {"train.peft.lora_dropout": 0.1, "train.runtime.max_iters": 8}
    straight = experiment(tmp_path / "straight", tiny_models, settings)
    train_lora(straight.config)
    stopped = experiment(
        tmp_path / "resumed", tiny_models, settings | {"train.runtime.max_iters": 4}
    )
    train_lora(stopped.config)
    at_stop = adapter_weights(stopped.config.train.runtime.out_dir, run_folder.LAST)

    resumed = experiment(tmp_path / "resumed", tiny_models, settings)
    summary = train_lora(resumed.config)

    assert summary.iter_num == 8
    expected = adapter_weights(straight.config.train.runtime.out_dir, run_folder.LAST)
    got = adapter_weights(resumed.config.train.runtime.out_dir, run_folder.LAST)
    assert expected.keys() == got.keys()
    for key, tensor in expected.items():
        assert torch.equal(tensor, got[key]), key
    # The resumed adapters went on training: every LoRA matrix moved after the stop.
    lora = [key for key in got if "lora_" in key]
    assert lora
    assert all(not torch.equal(at_stop[key], got[key]) for key in lora)


def test_the_same_tensorboard_tags_as_the_from_scratch_trainer(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import (  # noqa: PLC0415 - slow import
        EventAccumulator,
    )

    loaded = experiment(tmp_path, tiny_models, {"train.runtime.tensorboard_enabled": True})

    train_lora(loaded.config)

    events = EventAccumulator(str(loaded.config.train.runtime.out_dir / run_folder.TB_DIR))
    events.Reload()  # pyright: ignore[reportUnknownMemberType] - untyped library
    tags = cast(list[str], events.Tags()["scalars"])  # pyright: ignore[reportUnknownMemberType] - untyped library
    for tag in (TAG_TRAIN_LOSS, TAG_VAL_LOSS, TAG_LR, TAG_TOKENS_PER_SEC, TAG_STEP_TIME_MS):
        assert tag in tags


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_after_training_on_a_toy_corpus_greedy_generation_stops_at_eos(
    tmp_path: Path, tiny_models: TinyModels, family: Family
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for index in range(16):
        (raw / f"{index}.txt").write_text("Wir stimmen zu.", encoding="utf-8")
    settings: dict[str, TomlValue] = {
        **lora_settings(tiny_models.of(family)),
        "prepare.raw_dir": "raw",
        "prepare.speeches.add_structure_tokens": False,
        "prepare.speeches.doc_separator": "",
        "prepare.train_split": 0.6,
        "train.hf_model.block_size": 16,
        "train.data.batch_size": 8,
        "train.peft.r": 8,
        "train.peft.lora_alpha": 16,
        "train.peft.extend_mlp_targets": True,
        "train.optim.learning_rate": 1e-2,
        "train.schedule.lr_decay_iters": 1000,
        "train.runtime.max_iters": 50,
        "train.runtime.eval_interval": 1000,
        "train.runtime.log_interval": 50,
        "sample.sample.start": "Wir",
        "sample.sample.temperature": 0.0,
        "sample.sample.max_new_tokens": 20,
    }
    loaded = load(tmp_path, settings)
    prepare_speech_records(loaded.config, frozenset({".txt"}))
    [untrained] = sample_lora(loaded.config)

    train_lora(loaded.config)
    [trained] = sample_lora(loaded.config)

    assert untrained != "Wir stimmen zu."
    # 20 new tokens were allowed: the text ends here because EOS stopped it.
    assert trained == "Wir stimmen zu."
    # Records without structure tokens are not speeches to report on.
    samples = loaded.config.train.runtime.out_dir / "samples"
    assert not list(samples.glob("*.json"))


def test_samples_are_saved_with_a_quality_report(tmp_path: Path, tiny_models: TinyModels) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Sprecher: Erika Muster\nPartei: SPD\n\n", encoding="utf-8")
    loaded = experiment(
        tmp_path,
        tiny_models,
        {"sample.sample.start": f"FILE:{prompt}", "sample.sample.num_samples": 2},
        family="gemma3",
    )
    train_lora(loaded.config)

    texts = sample_lora(loaded.config)

    assert len(texts) == 2
    assert all(text.startswith("Sprecher: Erika Muster\nPartei: SPD\n\n") for text in texts)
    samples = sorted((loaded.config.train.runtime.out_dir / "samples").iterdir())
    assert [path.suffix for path in samples] == [".json", ".txt", ".json", ".txt"]
    report = json.loads(samples[0].read_text(encoding="utf-8"))
    assert report["header"] == {"Sprecher": "Erika Muster", "Partei": "SPD"}
    assert {"anomalies", "line_repetition", "repeated_ngrams", "ended_at_eos"} <= report.keys()


def test_require_adapters_without_adapters_is_an_error_naming_the_folder(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = experiment(tmp_path, tiny_models, {"sample.sample.require_adapters": True})

    with pytest.raises(CheckpointError, match=r"no adapters in .*out/adapters .*require_adapters"):
        sample_lora(loaded.config)


def test_merged_model_is_a_plain_transformers_model_with_the_adapters_folded_in(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy, only this test

    loaded = experiment(
        tmp_path, tiny_models, {"train.hf_model.save_merged": True}, family="gemma3"
    )
    out_dir = loaded.config.train.runtime.out_dir
    hf = loaded.config.train.hf_model
    assert hf is not None

    train_lora(loaded.config)

    merged: torch.nn.Module = AutoModelForCausalLM.from_pretrained(str(out_dir / "merged"))  # pyright: ignore[reportUnknownMemberType] - untyped library
    merged.eval()
    trained = load_trained(out_dir, hf, dtype=torch.float32, require_adapters=True)
    ids = torch.tensor([trained.tokenizer.encode("<SPEECH_START>\nSprecher: Paul")])
    with torch.no_grad():
        assert torch.allclose(
            plain_next_token_loss(merged, ids[:, :-1], ids[:, 1:]),
            plain_next_token_loss(trained.model, ids[:, :-1], ids[:, 1:]),
            atol=1e-5,
        )
    assert (out_dir / "merged" / "tokenizer.json").is_file()


def test_with_peft_disabled_every_weight_trains_and_resumes(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    settings: dict[str, TomlValue] = {"train.peft.enabled": False, "train.runtime.max_iters": 3}
    train_lora(experiment(tmp_path, tiny_models, settings).config)
    loaded = experiment(tmp_path, tiny_models, settings | {"train.runtime.max_iters": 5})

    summary = train_lora(loaded.config)
    texts = sample_lora(loaded.config)

    assert summary.iter_num == 5
    last = run_folder.adapters_dir(loaded.config.train.runtime.out_dir, run_folder.LAST)
    assert (last / "config.json").is_file()
    assert len(texts) == 1


def test_dataset_prepared_for_another_base_model_is_an_error(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    experiment(tmp_path, tiny_models)
    other = load(
        tmp_path,
        lora_settings(tiny_models.gemma3) | {"prepare.raw_dir": "raw"},
    )

    with pytest.raises(DataError, match=r"prepared with the tokenizer of .*tiny-qwen2.*prepare"):
        train_lora(other.config)


def test_resuming_with_another_base_model_is_an_error(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    train_lora(experiment(tmp_path / "a", tiny_models).config)
    other = experiment(
        tmp_path / "b",
        tiny_models,
        {"train.runtime.out_dir": str(tmp_path / "a" / "out")},
        family="gemma3",
    )

    with pytest.raises(CheckpointError, match=r"holds a run of .*tiny-qwen2"):
        train_lora(other.config)


def test_target_module_the_model_lacks_is_a_config_error_listing_its_layers(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = experiment(tmp_path, tiny_models, {"train.peft.target_modules": ["q_proj", "c_attn"]})

    with pytest.raises(
        ConfigError, match=r"names c_attn, which .* does not have; its linear layers are .*q_proj"
    ):
        train_lora(loaded.config)


def test_bfloat16_weights_with_gradient_checkpointing_train_and_sample(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = experiment(
        tmp_path,
        tiny_models,
        {
            "train.hf_model.dtype": "bfloat16",
            "train.hf_model.gradient_checkpointing": True,
            "train.runtime.dtype": "bfloat16",
            "train.peft.extend_mlp_targets": True,
        },
        family="gemma3",
    )

    summary = train_lora(loaded.config)
    texts = sample_lora(loaded.config)

    assert math.isfinite(summary.best_val_loss)
    assert len(texts) == 1
    weights = adapter_weights(loaded.config.train.runtime.out_dir, run_folder.FINAL)
    assert any("mlp.down_proj.lora_A" in key for key in weights)


def test_resumed_adapters_keep_their_lora_settings_and_say_so(
    tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    train_lora(experiment(tmp_path, tiny_models, {"train.runtime.max_iters": 3}).config)
    loaded = experiment(tmp_path, tiny_models, {"train.runtime.max_iters": 4, "train.peft.r": 8})
    capsys.readouterr()

    summary = train_lora(loaded.config)

    assert summary.iter_num == 4
    last = run_folder.adapters_dir(loaded.config.train.runtime.out_dir, run_folder.LAST)
    assert f"resume: train.peft.r = 4 from {last} (config says 8)" in capsys.readouterr().out
