"""`inspect` in-process on the records kinds the CLI tests do not prepare: a Hugging Face
datasets split and prompt/completion lines, with the tiny chat tokenizers of
tests/finetune_helpers.py."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from ml_playground import inspection
from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from ml_playground.inspect_dataset import _load_tokenizer, inspect  # pyright: ignore[reportPrivateUsage] - the loader the verb uses
from ml_playground.inspect_windows import TARGET_CLOSE, TARGET_OPEN
from tests.experiments import chat_settings, load
from tests.finetune_helpers import (
    QWEN2_TEMPLATE,
    TinyModels,
    build_chat_model,
    conversation,
    write_jsonl,
)

# `datasets` is only partly typed; the test builds its dataset through Any.
datasets: Any = importlib.import_module("datasets")
MARKED = re.compile(re.escape(TARGET_OPEN) + "(.*?)" + re.escape(TARGET_CLOSE), re.DOTALL)


def test_records_of_a_saved_hf_dataset_are_located_by_their_row(
    tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    rows = [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(6)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "saved")
    )
    settings = chat_settings(model)
    settings.pop("prepare.records_path")
    config = load(tmp_path, settings | {"prepare.hf_dataset": "saved"}).config
    tokenizer = load_tokenizer(ModelSource.local(model))
    prepare_chat_dataset(config, lambda: tokenizer)

    with inspection.opened(config, _load_tokenizer) as dataset:
        sources = sorted(
            record.source or "" for split in dataset.splits for record in split.records
        )
    inspect(config, 2)

    assert sources == sorted(f"{tmp_path / 'saved'}[train]#{i}" for i in range(1, 7))
    out = capsys.readouterr().out
    assert "Hugging Face dataset" in out
    assert "checks: no warnings" in out


def test_prompt_completion_records_train_the_completion_and_its_eos(
    tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"Frage {i}?", "completion": f" Antwort {i}."} for i in range(8)],
    )
    settings = chat_settings(model, "pairs.jsonl") | {
        "prepare.format": "prompt_completion",
        "train.hf_model.block_size": 24,
    }
    config = load(tmp_path, settings).config
    tokenizer = load_tokenizer(ModelSource.local(model))
    prepare_chat_dataset(config, lambda: tokenizer)

    inspect(config, 4)

    out = capsys.readouterr().out
    targets = MARKED.findall(out)
    assert any(re.fullmatch(r" Antwort \d\.<\|endoftext\|>", target) for target in targets), out
    assert not any("Frage" in target for target in targets)
    assert "checks: no warnings" in out
