"""What the fine-tuned route derives from a run: prompt format, stops, adapters, dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.config import ExperimentConfig, load_config
from ml_playground.data.records import DatasetMeta
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START
from ml_playground.errors import ExportError
from ml_playground.export.hf import adapter_dir, prompt_format
from ml_playground.export.modelfile import RAW_COMPLETION


def config(folder: Path) -> ExperimentConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(
        '[train.hf_model]\nmodel_name = "Qwen/Qwen2.5-0.5B"\n[train.runtime]\nout_dir = "out"\n',
        encoding="utf-8",
    )
    return load_config(folder / "config.toml", folder).config


def tokenizer(folder: Path, **settings: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


def dataset_meta(folder: Path, structure: tuple[str, ...]) -> None:
    meta = DatasetMeta(
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        structure_tokens=structure,
        added_tokens=structure,
        vocab_size=10,
        doc_separator="\n\n",
        records={},
        characters={},
        file_sizes={},
        fingerprint={},
        report={},
    )
    (folder / "datasets").mkdir(parents=True, exist_ok=True)
    (folder / "datasets" / "meta.json").write_text(json.dumps(meta.to_json()), encoding="utf-8")


def test_speech_records_with_structure_tokens(tmp_path: Path) -> None:
    run = config(tmp_path)
    dataset_meta(tmp_path, (SPEECH_START, SPEECH_END))

    fmt = prompt_format(run, tokenizer(tmp_path / "tok", eos_token="<|endoftext|>"))

    assert fmt.template == f"{SPEECH_START}{{{{ .Prompt }}}}\n\n"
    assert fmt.stops == (SPEECH_END, "<|endoftext|>")


def test_speech_records_without_structure_tokens(tmp_path: Path) -> None:
    run = config(tmp_path)
    dataset_meta(tmp_path, ())

    fmt = prompt_format(run, tokenizer(tmp_path / "tok", eos_token={"content": "<eos>"}))

    assert fmt.template == "{{ .Prompt }}\n\n"
    assert fmt.stops == ("<eos>",)


def test_without_speech_records_a_chat_template_is_left_to_ollama(tmp_path: Path) -> None:
    run = config(tmp_path)

    fmt = prompt_format(
        run, tokenizer(tmp_path / "tok", eos_token="<|im_end|>", chat_template="{{ messages }}")
    )

    assert fmt.template is None
    assert fmt.stops == ("<|im_end|>",)


def test_without_records_or_chat_template_it_is_raw_completion(tmp_path: Path) -> None:
    fmt = prompt_format(config(tmp_path), tokenizer(tmp_path / "tok"))

    assert fmt.template == RAW_COMPLETION
    assert fmt.stops == ()


def test_adapters_default_to_best_then_final_then_last(tmp_path: Path) -> None:
    for name in ("last", "final"):
        (tmp_path / "adapters" / name).mkdir(parents=True)

    assert adapter_dir(tmp_path, None).name == "final"
    assert adapter_dir(tmp_path, "last").name == "last"
    with pytest.raises(ExportError, match=r"no LoRA adapters .*adapters/best"):
        adapter_dir(tmp_path, "best")
