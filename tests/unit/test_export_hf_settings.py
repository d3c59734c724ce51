"""What the fine-tuned route derives from a run: prompt format, stops, adapters, dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.artifacts import write_artifact
from ml_playground.checkpoint import RunMeta
from ml_playground.config import ExperimentConfig, load_config
from ml_playground.data.records import (
    DatasetMeta,
    Fingerprint,
    RecordSettings,
    speech_record_format,
)
from ml_playground.data.speeches.selection import Selection
from ml_playground.data.speeches.source import ReadTally
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START
from ml_playground.data.table import RowTally
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


def dataset_meta(folder: Path, *, structure_tokens: bool) -> None:
    """datasets/meta.json of speech records, as prepare writes it."""
    records = speech_record_format(structure_tokens=structure_tokens)
    tally = RowTally(read=0, repaired=0, malformed={}, examples=())
    settings = RecordSettings(
        format_version=1,
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        add_structure_tokens=structure_tokens,
        doc_separator="\n\n",
        train_split=0.9,
        seed=1,
        max_records=None,
        selection=Selection().settings(),
    )
    meta = DatasetMeta(
        **records.record_format(),
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        vocab_size=10,
        records={},
        characters={},
        file_sizes={},
        fingerprint=Fingerprint(inputs=(), settings=settings),
        rows=ReadTally(
            **tally.model_dump(),
            kept=0,
            skipped={},
            unreadable_values={},
            unknown_mpids=0,
            member_tables=tally,
        ),
    )
    write_artifact(folder / "datasets" / "meta.json", meta)


def run_meta(out_dir: Path, *, opening: str, closing: str, stops: tuple[str, ...]) -> None:
    """out/meta.json of a fine-tuning run, as the trainer writes it."""
    RunMeta(
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        vocab_size=10,
        structure_tokens=(),
        added_tokens=(),
        doc_separator="",
        lora=True,
        record_opening=opening,
        record_closing=closing,
        stop_tokens=stops,
    ).write(out_dir)


def test_speech_records_with_structure_tokens_open_and_stop_as_the_dataset_says(
    tmp_path: Path,
) -> None:
    run = config(tmp_path)
    dataset_meta(tmp_path, structure_tokens=True)

    fmt = prompt_format(run, tokenizer(tmp_path / "tok", eos_token="<|endoftext|>"))

    assert fmt.template == f"{SPEECH_START}\n{{{{ .Prompt }}}}\n\n"
    assert fmt.stops == (SPEECH_END, "<|endoftext|>")


def test_speech_records_without_structure_tokens(tmp_path: Path) -> None:
    run = config(tmp_path)
    dataset_meta(tmp_path, structure_tokens=False)

    fmt = prompt_format(run, tokenizer(tmp_path / "tok", eos_token={"content": "<eos>"}))

    assert fmt.template == "{{ .Prompt }}\n\n"
    assert fmt.stops == ("<eos>",)


def test_the_run_meta_in_out_dir_wins_over_the_dataset(tmp_path: Path) -> None:
    run = config(tmp_path)
    dataset_meta(tmp_path, structure_tokens=False)
    run_meta(tmp_path / "out", opening="<s>\n", closing="</s>", stops=("</s>",))

    fmt = prompt_format(run, tokenizer(tmp_path / "tok", eos_token="<eos>"))

    assert fmt.template == "<s>\n{{ .Prompt }}\n\n"
    assert fmt.stops == ("</s>", "<eos>")


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
