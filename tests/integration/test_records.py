"""Preparing a fine-tuning dataset: speeches CSV + member tables + tokenizer of a tiny model.

The speeches table is synthetic SpeakGer format; the member tables are slices of the real
SpeakGer files; the tokenizer is the tiny local model's, as `model_name` names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml_playground.config_loader import LoadedConfig
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import (
    FORMAT_VERSION,
    DatasetMeta,
    HFTokenizerFolder,
    RecordFormat,
    read_meta,
)
from ml_playground.data.speeches.dataset import prepare_speech_dataset
from ml_playground.data.speeches.source import ReadTally, speech_sources
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START
from ml_playground.data.writer import require_hf_model
from ml_playground.errors import ConfigError, DataError
from ml_playground.finetune.hub import ModelSource, load_tokenizer, tokenizer_loader
from tests.experiments import load, lora_settings
from tests.finetune_helpers import (
    SpeechRow,
    TinyModels,
    copy_member_slices,
    cut_after,
    member_name,
    prepared_split,
    speeches,
    write_speeches_csv,
)
from tests.toml_helpers import TomlValue

CSV_ONLY = frozenset({".csv"})


def speakger_experiment(
    root: Path, tiny_models: TinyModels, rows: list[SpeechRow], **overrides: TomlValue
) -> LoadedConfig:
    raw = root / "raw"
    write_speeches_csv(raw / "Bundestag.csv", rows)
    copy_member_slices(raw)
    return load(root, speakger_settings(tiny_models, **overrides))


def speakger_settings(tiny_models: TinyModels, **overrides: TomlValue) -> dict[str, TomlValue]:
    """Tiny settings reading raw/; `prepare__seed=7` sets prepare.seed."""
    settings = lora_settings(tiny_models.gemma3) | {"prepare.raw_dir": "raw"}
    return settings | {key.replace("__", "."): value for key, value in overrides.items()}


def read_dataset_meta(dataset_dir: Path) -> DatasetMeta:
    return read_meta(dataset_dir / META_FILE)


def framing(meta: DatasetMeta) -> RecordFormat:
    assert meta.record_format is not None, "a records dataset says how its records are framed"
    return meta.record_format


def records_of(meta: DatasetMeta) -> dict[str, int]:
    assert meta.records is not None, "a records dataset counts its records"
    return meta.records


def prepared_texts(dataset_dir: Path) -> list[str]:
    """The text of every prepared record, train then val, read back from the token files:
    each record must be its text tokenized as a record begins, then EOS and the separator
    (the bins the fine-tuning trainer reads, checked against an independent tokenization)."""
    meta = read_dataset_meta(dataset_dir)
    tokenizer = load_tokenizer(ModelSource.local(dataset_dir / "tokenizer"))
    eos = tokenizer.eos_token_id
    assert eos is not None
    closing = [eos, *tokenizer.encode(framing(meta).doc_separator, add_special_tokens=False)]
    texts: list[str] = []
    for split in ("train", "val"):
        ids, mask = prepared_split(dataset_dir, split)
        assert mask is None and len(ids) == meta.tokens[split]
        records = cut_after(ids, closing)
        assert len(records) == records_of(meta)[split]
        for record in records:
            body = record[: -len(closing)]
            start = 1 if body and body[0] == tokenizer.bos_token_id else 0
            text = tokenizer.decode(body[start:], skip_special_tokens=False)
            assert record == [*tokenizer.encode(text, add_special_tokens=True), *closing]
            texts.append(text)
    return texts


def prepare(loaded: LoadedConfig) -> str:
    config = loaded.config
    sources = speech_sources(config.prepare, CSV_ONLY)
    load_tokenizer = tokenizer_loader(require_hf_model(config))
    return prepare_speech_dataset(config, sources, load_tokenizer, show_progress=False).message


def test_prepare_writes_records_a_tokenizer_with_structure_tokens_and_meta(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    rows = [*speeches(12), SpeechRow("Das Wort hat der Kollege.", chair="True")]
    loaded = speakger_experiment(tmp_path, tiny_models, rows)
    dataset_dir = loaded.config.prepare.dataset_dir

    message = prepare(loaded)

    meta = read_dataset_meta(dataset_dir)
    texts = prepared_texts(dataset_dir)
    assert len(texts) == 12 == records_of(meta)["train"] + records_of(meta)["val"]
    assert records_of(meta)["val"] >= 1
    first = texts[0]
    assert first.startswith(f"{SPEECH_START}\nSprecher: {member_name('19398')}\n")
    assert "Partei: CDU\nJahr: 2019\n\n" in first
    assert first.endswith(SPEECH_END)
    assert not (dataset_dir / "train.jsonl").exists()
    assert framing(meta).added_tokens == (SPEECH_START, SPEECH_END)
    assert meta.tokenizer == HFTokenizerFolder(base_model=str(tiny_models.gemma3), revision=None)
    assert isinstance(meta.rows, ReadTally)
    assert meta.rows.skipped == {"chair": 1}
    tokenizer = load_tokenizer(ModelSource.local(dataset_dir / "tokenizer"))
    assert len(tokenizer) == meta.vocab_size
    assert len(tokenizer.encode(SPEECH_START, add_special_tokens=False)) == 1
    assert "12 speeches kept; skipped 1 chair" in message


@pytest.mark.parametrize("structure_tokens", [True, False])
def test_meta_says_how_every_record_opens_and_closes_and_what_stops_generation(
    tmp_path: Path, tiny_models: TinyModels, structure_tokens: bool
) -> None:
    overrides: dict[str, TomlValue] = {"prepare__speeches__add_structure_tokens": structure_tokens}
    loaded = speakger_experiment(tmp_path, tiny_models, speeches(4), **overrides)
    dataset_dir = loaded.config.prepare.dataset_dir

    prepare(loaded)

    meta = framing(read_dataset_meta(dataset_dir))
    texts = prepared_texts(dataset_dir)
    assert all(text.startswith(meta.record_opening) for text in texts)
    assert all(text.endswith(meta.record_closing) for text in texts)
    if structure_tokens:
        assert (meta.record_opening, meta.record_closing) == (f"{SPEECH_START}\n", SPEECH_END)
        assert meta.stop_tokens == (SPEECH_END,)
    else:
        assert (meta.record_opening, meta.record_closing, meta.stop_tokens) == ("", "", ())


def prepared_meta_json(root: Path, tiny_models: TinyModels) -> tuple[Path, dict[str, Any]]:
    """A prepared dataset's meta.json, and what it holds, for a test to rewrite."""
    loaded = speakger_experiment(root, tiny_models, speeches(4))
    prepare(loaded)
    path = loaded.config.prepare.dataset_dir / "meta.json"
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_a_record_format_without_its_opening_closing_and_stops_is_refused_as_damaged(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    path, saved = prepared_meta_json(tmp_path, tiny_models)
    for key in ("record_opening", "record_closing", "stop_tokens"):
        del saved["record_format"][key]
    path.write_text(json.dumps(saved), encoding="utf-8")

    with pytest.raises(
        DataError, match=rf"{path} .*'record_format.record_opening'.*run `ml-playground prepare"
    ):
        read_dataset_meta(path.parent)


def test_a_damaged_meta_json_names_the_file_the_field_and_says_to_prepare(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    path, saved = prepared_meta_json(tmp_path, tiny_models)
    saved["vocab_size"] = "many"
    path.write_text(json.dumps(saved), encoding="utf-8")

    with pytest.raises(DataError, match=rf"{path} .*'vocab_size'.*run `ml-playground prepare"):
        read_dataset_meta(path.parent)


def test_preparing_again_is_skipped_until_settings_or_inputs_change(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = speakger_experiment(tmp_path, tiny_models, speeches(8))
    prepare(loaded)

    again = prepare(loaded)
    reseeded = prepare(load(tmp_path, speakger_settings(tiny_models, prepare__seed=7)))
    more_input = prepare(speakger_experiment(tmp_path, tiny_models, speeches(9), prepare__seed=7))

    assert again.startswith("dataset up to date")
    assert reseeded.startswith("prepared ")
    assert more_input.startswith("prepared ")
    rows = read_dataset_meta(loaded.config.prepare.dataset_dir).rows
    assert isinstance(rows, ReadTally) and rows.kept == 9


def test_split_is_by_speech_seeded_and_leaves_no_split_empty(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    def split(folder: Path, count: int, seed: int) -> list[int]:
        loaded = speakger_experiment(folder, tiny_models, speeches(count), prepare__seed=seed)
        prepare(loaded)
        meta = read_dataset_meta(loaded.config.prepare.dataset_dir)
        return [records_of(meta)["train"], records_of(meta)["val"]]

    assert split(tmp_path / "a", 40, seed=1) == split(tmp_path / "b", 40, seed=1)
    assert split(tmp_path / "c", 2, seed=1) == [1, 1]


def test_filters_that_leave_fewer_than_two_speeches_are_an_error_with_the_counts(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = speakger_experiment(tmp_path, tiny_models, speeches(6), prepare__speeches__periods=[3])

    with pytest.raises(DataError, match=r"0 speech\(es\) to prepare.*skipped 6 other period"):
        prepare(loaded)


def test_prepare_without_a_base_model_is_a_config_error(tmp_path: Path) -> None:
    write_speeches_csv(tmp_path / "raw" / "speeches.csv", speeches(3))
    loaded = load(tmp_path, {"prepare.raw_dir": "raw"})

    with pytest.raises(ConfigError, match=r"needs \[train.hf_model\] model_name"):
        prepare(loaded)


def test_bad_date_filter_is_a_config_error_naming_the_key_as_the_config_loads(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"invalid config in \S+\.toml: prepare.speeches.date_from = '3.3.2020' is not a",
    ):
        speakger_experiment(
            tmp_path, tiny_models, speeches(3), prepare__speeches__date_from="3.3.2020"
        )


def test_a_folder_prepared_by_an_older_version_is_refused_in_one_line_until_prepared_again(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    loaded = speakger_experiment(tmp_path, tiny_models, speeches(4))
    prepare(loaded)
    dataset_dir = loaded.config.prepare.dataset_dir
    # The records meta of format_version 2, before one schema served every dataset.
    path = dataset_dir / "meta.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(
        json.dumps(saved | {"format_version": 2, "base_model": "tiny", "revision": None}),
        encoding="utf-8",
    )

    with pytest.raises(DataError) as error:
        read_dataset_meta(dataset_dir)

    message = str(error.value)
    assert "\n" not in message and error.value.exit_code == 2
    assert message.startswith(f"{dataset_dir} was prepared by an older version")
    assert "ml-playground prepare <experiment> --force" in message
    prepare(loaded)  # an older folder is never up to date: preparing rebuilds it
    assert read_dataset_meta(dataset_dir).format_version == FORMAT_VERSION
    assert (dataset_dir / "train.bin").is_file() and (dataset_dir / "val.bin").is_file()


def test_max_records_keeps_only_the_first_speeches_read(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    every = speakger_experiment(tmp_path / "all", tiny_models, speeches(12))
    prepare(every)
    capped = speakger_experiment(
        tmp_path / "five", tiny_models, speeches(12), prepare__speeches__max_records=5
    )

    message = prepare(capped)

    texts = prepared_texts(capped.config.prepare.dataset_dir)
    assert len(texts) == 5
    assert set(texts) < set(prepared_texts(every.config.prepare.dataset_dir))
    assert "5 speeches kept" in message
