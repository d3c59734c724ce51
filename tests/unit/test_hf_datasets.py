"""[prepare] hf_dataset: records from a Hugging Face `datasets` split, read offline.

The datasets are built here, saved with `save_to_disk` or written as data files in a
folder, the two local forms `datasets` loads without a network; the tokenizers are the
tiny chat ones of tests/finetune_helpers.py.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.data.dataset_meta import DatasetMeta
from ml_playground.data.table import RowTally
from ml_playground.errors import ConfigError, DataError
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from tests.experiments import chat_settings, load
from tests.finetune_helpers import (
    QWEN2_TEMPLATE,
    TinyModels,
    build_chat_model,
    conversation,
    prepared_split,
    write_jsonl,
)
from tests.toml_helpers import TomlValue

# `datasets` is only partly typed; the tests build their datasets through Any.
datasets: Any = importlib.import_module("datasets")


def rows_of(meta: DatasetMeta) -> RowTally:
    assert meta.rows is not None, "a records dataset tallies its source rows"
    return meta.rows


def hf_settings(model: Path, dataset: str, **extra: TomlValue) -> dict[str, TomlValue]:
    settings = chat_settings(model)
    settings.pop("prepare.records_path")
    return (
        settings | {"prepare.hf_dataset": dataset} | {f"prepare.{k}": v for k, v in extra.items()}
    )


def conversations(count: int, start: int = 0) -> list[dict[str, object]]:
    return [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(start, start + count)]


def test_a_saved_dataset_split_is_rendered_and_its_bad_rows_counted_by_row_number(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    bad = {"messages": [{"role": "user", "content": "Nur eine Frage."}]}
    rows = [*conversations(5), bad]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows),
            "test": datasets.Dataset.from_list(conversations(2, start=50)),
        }
    ).save_to_disk(str(tmp_path / "saved"))
    config = load(tmp_path, hf_settings(model, "saved")).config
    tokenizer = load_tokenizer(ModelSource.local(model))

    outcome = prepare_chat_dataset(config, lambda: tokenizer)

    tally = rows_of(outcome.meta)
    assert tally.read == 6
    assert tally.malformed == {"no assistant turn": 1}
    assert tally.examples == (f"{tmp_path / 'saved'}[train]#6: no assistant turn",)
    dataset_dir = config.prepare.dataset_dir
    answers: list[str] = []
    for split in ("train", "val"):
        ids, mask = prepared_split(dataset_dir, split)
        assert mask is not None
        # Each answer is one run of target tokens.
        run: list[int] = []
        for token, flag in [*zip(ids, mask, strict=True), (0, 0)]:
            if flag:
                run.append(token)
            elif run:
                answers.append(tokenizer.decode(run))
                run = []
    answers.sort()
    assert answers == sorted(f"Antwort {i}.<|im_end|>\n" for i in range(5))
    assert prepare_chat_dataset(config, lambda: tokenizer).skipped


def test_another_split_or_changed_rows_prepare_again(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(conversations(4)),
            "test": datasets.Dataset.from_list(conversations(3, 9)),
        }
    ).save_to_disk(str(saved))
    tokenizer = load_tokenizer(ModelSource.local(model))
    train = load(tmp_path, hf_settings(model, "saved")).config
    assert rows_of(prepare_chat_dataset(train, lambda: tokenizer).meta).read == 4

    test = load(tmp_path, hf_settings(model, "saved", hf_dataset_split="test")).config
    again = prepare_chat_dataset(test, lambda: tokenizer)

    assert not again.skipped and rows_of(again.meta).read == 3
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(conversations(4)),
            "test": datasets.Dataset.from_list(conversations(2, 9)),
        }
    ).save_to_disk(str(tmp_path / "resaved"))
    changed = load(tmp_path, hf_settings(model, "resaved", hf_dataset_split="test")).config
    assert rows_of(prepare_chat_dataset(changed, lambda: tokenizer).meta).read == 2


def test_a_folder_of_data_files_loads_through_load_dataset(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(
        tmp_path / "pairs" / "train.jsonl",
        [{"prompt": f"Frage {i}?", "completion": f"Antwort {i}."} for i in range(4)],
    )
    settings = hf_settings(model, "pairs") | {"prepare.format": "prompt_completion"}
    config = load(tmp_path, settings).config

    outcome = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    assert rows_of(outcome.meta).read == 4 and not rows_of(outcome.meta).malformed
    assert f"{tmp_path / 'pairs'}[train]" in json.dumps(outcome.meta.fingerprint.model_dump())


def test_a_missing_split_names_the_splits_there_are(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(conversations(3))}).save_to_disk(
        str(tmp_path / "saved")
    )
    config = load(tmp_path, hf_settings(model, "saved", hf_dataset_split="validation")).config

    with pytest.raises(
        DataError, match="has no split 'validation'; set hf_dataset_split to one of train"
    ):
        prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))


def test_a_dataset_neither_local_nor_cached_is_one_line_saying_so(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    config = load(tmp_path, hf_settings(model, "nobody/no-such-dataset")).config

    with pytest.raises(DataError) as error:
        prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot load [prepare] hf_dataset nobody/no-such-dataset[train]: ")
    assert message.endswith("(this machine may be offline)")
    assert not config.prepare.dataset_dir.exists()


def test_records_path_and_hf_dataset_together_are_a_config_error(tmp_path: Path) -> None:
    settings = hf_settings(tmp_path / "model", "saved") | {"prepare.records_path": "chats.jsonl"}

    with pytest.raises(
        ConfigError, match=r"set either prepare.records_path .* or prepare.hf_dataset"
    ):
        load(tmp_path, settings)


def test_hf_dataset_subset_picks_that_configuration_of_the_dataset(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    hub = tmp_path / "hub"
    write_jsonl(hub / "short" / "train.jsonl", conversations(2))
    write_jsonl(hub / "long" / "train.jsonl", conversations(5, start=10))
    # A dataset repository's card declares its configurations, as on the hub.
    (hub / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: short\n  data_files:\n  - split: train\n    path: short/train.jsonl\n"
        "- config_name: long\n  data_files:\n  - split: train\n    path: long/train.jsonl\n"
        "---\n",
        encoding="utf-8",
    )
    tokenizer = load_tokenizer(ModelSource.local(model))

    long = load(tmp_path, hf_settings(model, str(hub), hf_dataset_subset="long")).config
    outcome = prepare_chat_dataset(long, lambda: tokenizer)

    assert outcome.meta.rows is not None
    assert outcome.meta.rows.read == 5
    assert f"{hub}/long[train]" in json.dumps(outcome.meta.fingerprint.model_dump())
    short = load(tmp_path, hf_settings(model, str(hub), hf_dataset_subset="short")).config
    short_rows = prepare_chat_dataset(short, lambda: tokenizer).meta.rows
    assert short_rows is not None
    assert short_rows.read == 2
