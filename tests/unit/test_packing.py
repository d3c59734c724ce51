"""Packing records into token streams: EOS after every speech, BOS where the model wants it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.packing import pack_dataset
from ml_playground.data.record_split import TRAIN_FILE, VAL_FILE
from ml_playground.finetune.hub import ModelSource, Tokenizer, load_tokenizer
from tests.finetune_helpers import Family, TinyModels


def write_dataset(folder: Path, train: list[str], val: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name, texts in ((TRAIN_FILE, train), (VAL_FILE, val)):
        lines = "".join(json.dumps({"text": text}) + "\n" for text in texts)
        (folder / name).write_text(lines, encoding="utf-8")
    (folder / META_FILE).write_text("{}", encoding="utf-8")
    return folder


def tokenizer_of(tiny_models: TinyModels, family: Family) -> Tokenizer:
    return load_tokenizer(ModelSource.local(tiny_models.of(family)))


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_every_record_is_closed_by_eos_and_the_separator(
    tmp_path: Path, tiny_models: TinyModels, family: Family
) -> None:
    tokenizer = tokenizer_of(tiny_models, family)
    dataset = write_dataset(tmp_path / "data", ["Ja.", "Nein."], ["Danke."])

    packed = pack_dataset(dataset, tokenizer, tmp_path / "out", separator="\n\n")

    eos = tokenizer.eos_token_id
    assert eos is not None
    separator = tokenizer.encode("\n\n", add_special_tokens=False)
    expected: list[int] = []
    for text in ("Ja.", "Nein."):
        expected += [*tokenizer.encode(text, add_special_tokens=True), eos, *separator]
    ids = np.fromfile(packed.train, dtype=packed.dtype).tolist()
    assert ids == expected
    assert packed.tokens["train"] == len(expected)
    starts_with_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    assert starts_with_bos == (family == "gemma3")


def test_an_unchanged_dataset_is_not_packed_again(tmp_path: Path, tiny_models: TinyModels) -> None:
    tokenizer = tokenizer_of(tiny_models, "qwen2")
    dataset = write_dataset(tmp_path / "data", ["Ja.", "Nein."], ["Danke."])
    first = pack_dataset(dataset, tokenizer, tmp_path / "out", separator="")
    written = first.train.stat().st_mtime_ns

    again = pack_dataset(dataset, tokenizer, tmp_path / "out", separator="")
    untouched = again.train.stat().st_mtime_ns == written
    (dataset / META_FILE).write_text('{"changed": true}', encoding="utf-8")
    changed = pack_dataset(dataset, tokenizer, tmp_path / "out", separator="\n")

    assert untouched
    assert again.tokens == first.tokens
    assert changed.tokens["train"] > first.tokens["train"]
