"""What the fine-tuned route derives from a run: prompt format, stops, adapters, dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.artifacts import write_artifact
from ml_playground.checkpoint import INTEGRITY_FILE, FolderDigests
from ml_playground.config import ExperimentConfig, RecordsSourceFormat, SpeechesConfig
from ml_playground.data.chat_records import ChatRecordSettings, chat_record_format
from ml_playground.data.dataset_meta import DatasetMeta, Fingerprint, HFTokenizerFolder
from ml_playground.data.speeches.dataset import SpeechSettings, speech_record_format
from ml_playground.data.speeches.source import ReadTally
from ml_playground.data.speeches.speech import SPEECH_END, SPEECH_START
from ml_playground.data.table import RowTally
from ml_playground.errors import ExportError
from ml_playground.export.chat_template import ollama_chat
from ml_playground.export.hf import adapter_dir
from ml_playground.export.modelfile import RAW_COMPLETION
from ml_playground.export.prompt_format import prompt_format
from ml_playground.run_folder import HFRunMeta, write_run_meta
from tests.experiments import load
from tests.finetune_helpers import QWEN25_TEMPLATE, chat_tokenizer
from tests.toml_helpers import Settings


def config(folder: Path, settings: Settings | None = None) -> ExperimentConfig:
    run = {"train.hf_model.model_name": "Qwen/Qwen2.5-0.5B", "train.runtime.out_dir": "out"}
    return load(folder, {**run, **(settings or {})}).config


def tokenizer(folder: Path, **settings: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


def dataset_meta(folder: Path, *, structure_tokens: bool) -> None:
    """datasets/meta.json of speech records, as prepare writes it."""
    records = speech_record_format(structure_tokens=structure_tokens)
    tally = RowTally(read=0, repaired=0, malformed={}, examples=())
    settings = SpeechSettings(
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        train_split=0.9,
        seed=1,
        speeches=SpeechesConfig(add_structure_tokens=structure_tokens),
    )
    meta = DatasetMeta(
        tokenizer=HFTokenizerFolder(base_model="Qwen/Qwen2.5-0.5B", revision=None),
        record_format=records,
        vocab_size=10,
        dtype="uint16",
        masked=False,
        tokens={"train": 0, "val": 0},
        records={},
        characters={},
        fingerprint=Fingerprint(inputs=(), settings=settings.to_json()),
        rows=ReadTally(
            **tally.model_dump(),
            kept=0,
            skipped={},
            undecodable_values={},
            unknown_mpids=0,
            member_tables=tally,
        ),
    )
    write_artifact(folder / "datasets" / "meta.json", meta)


def run_meta(
    out_dir: Path,
    *,
    opening: str = "",
    closing: str = "",
    stops: tuple[str, ...] = (),
    source_format: RecordsSourceFormat | None = None,
) -> None:
    """out/meta.json of a fine-tuning run, as the trainer writes it."""
    write_run_meta(
        out_dir,
        HFRunMeta(
            source_format=source_format,
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
        ),
    )


def test_speech_records_with_structure_tokens_open_and_stop_as_the_dataset_says(
    tmp_path: Path,
) -> None:
    run = config(tmp_path)
    dataset_meta(tmp_path, structure_tokens=True)

    fmt = prompt_format(run, tokenizer(tmp_path / "tok", eos_token="<|endoftext|>"))

    assert fmt.template == f"{SPEECH_START}\n{{{{ .Prompt }}}}\n\n"
    assert fmt.stops == (SPEECH_END, "<|endoftext|>")
    assert fmt.description == (
        "Prompt format: header records. Give a record's header lines as the prompt; the"
        f" template opens the record with {SPEECH_START}, adds the blank line, and the model"
        f" writes the text until {SPEECH_END}."
    )


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


def chat_run_tokenizer(folder: Path, template: str = QWEN25_TEMPLATE) -> Path:
    """out/tokenizer of a chat run: the tiny Qwen2 tokenizer with ChatML turn tokens."""
    chat_tokenizer("qwen2", template).save_pretrained(str(folder))
    return folder


def chat_dataset_meta(folder: Path, source_format: RecordsSourceFormat) -> None:
    """datasets/meta.json of chat records, as prepare writes it."""
    settings = ChatRecordSettings(
        base_model="Qwen/Qwen2.5-0.5B",
        revision=None,
        source_format=source_format,
        chat_template=None,
        train_split=0.9,
        seed=1,
    )
    meta = DatasetMeta(
        tokenizer=HFTokenizerFolder(base_model="Qwen/Qwen2.5-0.5B", revision=None),
        record_format=chat_record_format(source_format),
        vocab_size=10,
        dtype="uint16",
        masked=True,
        tokens={"train": 0, "val": 0},
        records={},
        trained_tokens={},
        fingerprint=Fingerprint(inputs=(), settings=settings.to_json()),
        rows=RowTally(read=0, repaired=0, malformed={}, examples=()),
    )
    write_artifact(folder / "datasets" / "meta.json", meta)


def test_messages_records_get_the_chat_template_in_go_and_its_end_of_turn_stop(
    tmp_path: Path,
) -> None:
    run = config(tmp_path)
    run_meta(tmp_path / "out", source_format="messages")
    tokenizer = chat_run_tokenizer(tmp_path / "out" / "tokenizer")

    fmt = prompt_format(run, tokenizer)

    expected = ollama_chat(chat_tokenizer("qwen2", QWEN25_TEMPLATE), "Qwen/Qwen2.5-0.5B")
    assert fmt.template == expected.template
    assert fmt.stops == ("<|im_end|>", "<|endoftext|>")
    assert "Qwen/Qwen2.5-0.5B's chat template" in fmt.description


@pytest.mark.parametrize("source_format", ["prompt_completion", "text"])
def test_prompt_completion_and_text_records_are_raw_completion(
    tmp_path: Path, source_format: RecordsSourceFormat
) -> None:
    run = config(tmp_path)
    run_meta(tmp_path / "out", source_format=source_format)

    fmt = prompt_format(run, chat_run_tokenizer(tmp_path / "out" / "tokenizer"))

    assert fmt.template == RAW_COMPLETION
    assert fmt.stops == ("<|endoftext|>",)


def test_the_run_meta_decides_even_where_its_dataset_now_holds_another_record_shape(
    tmp_path: Path,
) -> None:
    run = config(tmp_path)
    run_meta(tmp_path / "out")  # header records: no JSONL shape
    chat_dataset_meta(tmp_path, "messages")

    fmt = prompt_format(run, chat_run_tokenizer(tmp_path / "out" / "tokenizer"))

    assert fmt.template == "{{ .Prompt }}\n\n"
    assert fmt.stops == ("<|endoftext|>",)


def test_a_configured_template_is_used_without_reading_the_chat_template(
    tmp_path: Path,
) -> None:
    run = config(tmp_path, {"export.ollama.template": "{{ .Prompt }}"})
    run_meta(tmp_path / "out", source_format="messages")
    # A template no Go template is derived from: numbered turns.
    numbered = "{% for m in messages %}{{ loop.index }} {{ m['content'] }}{% endfor %}"

    fmt = prompt_format(run, chat_run_tokenizer(tmp_path / "out" / "tokenizer", numbered))

    assert fmt.template is None  # the Modelfile takes [export.ollama] template
    assert fmt.stops == ("<|endoftext|>",)


def test_adapters_default_to_best_then_final_then_last(tmp_path: Path) -> None:
    for name in ("last", "final"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        write_artifact(tmp_path / "adapters" / name / INTEGRITY_FILE, FolderDigests(files={}))

    assert adapter_dir(tmp_path, None).name == "final"
    assert adapter_dir(tmp_path, "last").name == "last"
    with pytest.raises(ExportError, match=r"no LoRA adapters .*adapters/best"):
        adapter_dir(tmp_path, "best")
