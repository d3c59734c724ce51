"""Chat records: rendering with the chat template, which tokens train, bad records, packing.

The tokenizers are the tiny BPE ones of tests/finetune_helpers.py with the turn tokens of
Qwen2 or Gemma and a chat template in that family's shape.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest

from ml_playground.data.batches import IGNORE_INDEX, BatchSampler
from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import read_meta
from ml_playground.data.rendering import (
    ChatTokenizer,
    TokenRecord,
    messages_record,
    prompt_completion_record,
)
from ml_playground.errors import ConfigError, DataError
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from tests.experiments import chat_settings, load
from tests.finetune_helpers import (
    GEMMA_TEMPLATE,
    QWEN2_GENERATION_TEMPLATE,
    QWEN2_TEMPLATE,
    Family,
    TinyModels,
    build_chat_model,
    conversation,
    cut_after,
    prepared_split,
    write_jsonl,
)

SYSTEM = "Sprich kurz."
TWO_TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Wer hat das Wort?"},
    {"role": "assistant", "content": "Herr Kollege, Sie haben das Wort."},
    {"role": "user", "content": "Und dann?"},
    {"role": "assistant", "content": "Ich danke Ihnen für Ihre Aufmerksamkeit."},
]


def chat_tokenizer(
    tmp_path: Path, tiny_models: TinyModels, family: Family, template: str | None
) -> ChatTokenizer:
    folder = build_chat_model(tmp_path / f"chat-{family}", tiny_models, family, template)
    return typing.cast(ChatTokenizer, load_tokenizer(ModelSource.local(folder)))


def trained_and_untrained(tokenizer: ChatTokenizer, record: TokenRecord) -> tuple[str, str]:
    """The text of the trained spans (joined by |) and of all other tokens."""
    mask = record.mask()
    trained = "|".join(tokenizer.decode(record.input_ids[a:b]) for a, b in record.trained_spans)
    untrained = tokenizer.decode([i for i, m in zip(record.input_ids, mask, strict=True) if not m])
    return trained, untrained


@pytest.mark.parametrize(
    ("family", "template", "closing"),
    [
        ("qwen2", QWEN2_TEMPLATE, "<|im_end|>\n"),
        ("qwen2", QWEN2_GENERATION_TEMPLATE, "<|im_end|>"),
        ("gemma3", GEMMA_TEMPLATE, "<end_of_turn>\n"),
    ],
    ids=["qwen2-prefix", "qwen2-generation-block", "gemma-prefix"],
)
def test_only_the_assistant_turns_of_a_conversation_train(
    tmp_path: Path, tiny_models: TinyModels, family: Family, template: str, closing: str
) -> None:
    tokenizer = chat_tokenizer(tmp_path, tiny_models, family, template)

    record = messages_record(tokenizer, TWO_TURNS)

    rendered = typing.cast(str, tokenizer.apply_chat_template(TWO_TURNS, tokenize=False))
    assert list(record.input_ids) == tokenizer.encode(rendered, add_special_tokens=False)
    trained, untrained = trained_and_untrained(tokenizer, record)
    answers = [m["content"] for m in TWO_TURNS if m["role"] == "assistant"]
    assert trained == "|".join(answer + closing for answer in answers)
    # Everything else is the prompt: system, user turns and the template's framing.
    for message in TWO_TURNS[:2] + TWO_TURNS[3:4]:
        assert message["content"] in untrained
    assert all(answer not in untrained for answer in answers)
    assert record.mask()[0] == 0


def test_prompt_then_completion_and_eos_where_only_the_completion_trains(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    tokenizer = chat_tokenizer(tmp_path, tiny_models, "gemma3", None)

    record = prompt_completion_record(tokenizer, "Wer hat das Wort?", " Herr Kollege.")

    assert record.input_ids[0] == tokenizer.bos_token_id
    assert record.input_ids[-1] == tokenizer.eos_token_id
    (span,) = record.trained_spans
    assert span[1] == len(record.input_ids)
    assert tokenizer.decode(record.input_ids[: span[0]]) == "<bos>Wer hat das Wort?"
    assert tokenizer.decode(record.input_ids[span[0] :]) == " Herr Kollege.<eos>"


def test_bad_records_are_counted_by_reason_with_their_line_and_the_rest_prepared(
    tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    good = [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(6)]
    write_jsonl(
        tmp_path / "chats.jsonl",
        good,
        extra_lines=[
            "{not json",
            json.dumps({"text": "no messages"}),
            json.dumps({"messages": [{"role": "robot", "content": "Hallo"}]}),
            json.dumps({"messages": [{"role": "user", "content": " "}]}),
            json.dumps(conversation("Frage?", "")),
            json.dumps({"messages": [{"role": "assistant", "content": "Zuerst ich."}]}),
            json.dumps({"messages": [{"role": "user", "content": "Nur eine Frage."}]}),
            json.dumps({"messages": [{"role": "user", "content": 42}]}),
            json.dumps({"messages": [{"role": "user", "content": ["Hallo"]}]}),
        ],
    )
    config = load(tmp_path, chat_settings(model)).config

    outcome = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    rows, records = outcome.meta.rows, outcome.meta.records
    assert rows is not None and records is not None
    assert rows.read == 15
    assert rows.malformed == {
        "content is a list, not a string": 1,
        "content is a number, not a string": 1,
        "empty content": 2,
        "no 'messages' key": 1,
        "no assistant turn": 1,
        "not JSON": 1,
        "roles out of order": 1,
        "unknown role": 1,
    }
    assert rows.examples[0] == f"{tmp_path / 'chats.jsonl'}:7: not JSON"
    assert records["train"] + records["val"] == 6
    assert "15 records read; 9 bad (" in outcome.message
    assert read_meta(config.prepare.dataset_dir / META_FILE) == outcome.meta
    again = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    assert again.skipped
    capsys.readouterr()


def test_a_file_without_a_usable_record_is_one_line_naming_it(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(tmp_path / "chats.jsonl", [{"text": "no messages"}], extra_lines=["[1, 2]"])
    config = load(tmp_path, chat_settings(model)).config

    with pytest.raises(DataError) as error:
        prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    message = str(error.value)
    assert "\n" not in message
    assert f"0 usable record(s) in {tmp_path / 'chats.jsonl'}" in message
    assert "1 no 'messages' key" in message and "1 not a JSON object" in message
    assert not (config.prepare.dataset_dir / "train.bin").exists()


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages[0].content + 1 }}",
        "{% for m in messages %}{{ (1 / 0) ~ m.content }}{% endfor %}",
    ],
    ids=["TypeError", "ZeroDivisionError"],
)
def test_a_chat_template_that_raises_is_one_line_naming_it_and_the_old_dataset_stays(
    tmp_path: Path, tiny_models: TinyModels, template: str
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    write_jsonl(
        tmp_path / "chats.jsonl", [conversation(f"Frage {i}?", "Antwort.") for i in range(4)]
    )
    config = load(tmp_path, chat_settings(model)).config
    prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    dataset_dir = config.prepare.dataset_dir
    before = {p: p.read_bytes() for p in sorted(dataset_dir.rglob("*")) if p.is_file()}
    broken = load(tmp_path, chat_settings(model) | {"prepare.chat_template": template}).config

    with pytest.raises(DataError) as error:
        prepare_chat_dataset(broken, lambda: load_tokenizer(ModelSource.local(model)))

    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"{tmp_path / 'chats.jsonl'}:1: the chat template of {model} failed ("
    )
    assert "[prepare] chat_template" in message
    assert {p: p.read_bytes() for p in sorted(dataset_dir.rglob("*")) if p.is_file()} == before


def test_a_tokenizer_without_a_chat_template_names_the_model_and_the_key(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", None)
    write_jsonl(tmp_path / "chats.jsonl", [conversation("Frage?", "Antwort.")] * 3)
    config = load(tmp_path, chat_settings(model)).config

    with pytest.raises(ConfigError, match=r"\[prepare\] chat_template") as error:
        prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    assert f"the tokenizer of {model} has no chat template" in str(error.value)


@pytest.mark.parametrize("as_file", [False, True], ids=["inline", "FILE:"])
def test_prepare_chat_template_supplies_one_and_travels_with_the_tokenizer(
    tmp_path: Path, tiny_models: TinyModels, as_file: bool
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", None)
    write_jsonl(tmp_path / "chats.jsonl", [conversation("Frage?", "Antwort.")] * 3)
    (tmp_path / "chat.jinja").write_text(QWEN2_TEMPLATE, encoding="utf-8")
    template = "FILE:chat.jinja" if as_file else QWEN2_TEMPLATE
    config = load(tmp_path, chat_settings(model) | {"prepare.chat_template": template}).config

    outcome = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    saved = load_tokenizer(ModelSource.local(config.prepare.dataset_dir / "tokenizer"))
    assert typing.cast(ChatTokenizer, saved).chat_template == QWEN2_TEMPLATE
    assert outcome.meta.trained_tokens is not None
    assert outcome.meta.trained_tokens["train"] > 0


def test_a_chat_template_that_is_neither_jinja_nor_a_file_is_a_config_error(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", None)
    write_jsonl(tmp_path / "chats.jsonl", [conversation("Frage?", "Antwort.")] * 3)
    config = load(tmp_path, chat_settings(model) | {"prepare.chat_template": "chat.jinja"}).config

    with pytest.raises(ConfigError, match="FILE:<path of one>"):
        prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))


def test_prepare_writes_each_records_tokens_and_mask_and_batches_ignore_the_prompt_targets(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "gemma3", GEMMA_TEMPLATE)
    chats = [conversation(f"Frage {i}?", f"Antwort {i}.", system=SYSTEM) for i in range(8)]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    config = load(tmp_path, chat_settings(model)).config
    outcome = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    dataset_dir = config.prepare.dataset_dir

    ids, mask = prepared_split(dataset_dir, "train")

    # Independently rendered: the split's records are some of the chats, in order, end to end.
    tokenizer = typing.cast(ChatTokenizer, load_tokenizer(ModelSource.local(model)))
    rendered = [messages_record(tokenizer, chat["messages"]) for chat in chats]  # type: ignore[arg-type]
    records: list[TokenRecord] = []
    offset = 0
    for record in rendered:
        if ids[offset : offset + len(record.input_ids)] == list(record.input_ids):
            records.append(record)
            offset += len(record.input_ids)
    counted = outcome.meta.records
    assert offset == len(ids) and mask is not None and counted is not None
    assert len(records) == counted["train"]
    assert ids == [i for record in records for i in record.input_ids]
    assert mask == [m for record in records for m in record.mask()]
    assert counted["val"] >= 1
    assert outcome.meta.tokens["train"] == len(ids)
    # Walk the stream in windows: y is the next token where it trains, ignored elsewhere.
    block = 8
    sampler = BatchSampler(
        dataset_dir / "train.bin",
        outcome.meta.dtype,
        block,
        1,
        mode="sequential",
        mask=dataset_dir / "train.mask.bin",
    )
    for window in range((len(ids) - 1) // block):
        x, y = sampler.next_batch()
        start = window * block
        assert [int(i) for i in x[0]] == ids[start : start + block]
        expected = [
            ids[t] if mask[t] else IGNORE_INDEX for t in range(start + 1, start + block + 1)
        ]
        assert [int(i) for i in y[0]] == expected
    # A record's first token (<bos>, a prompt token) is never the target after the last.
    starts = np.cumsum([0] + [len(r.input_ids) for r in records])[1:-1]
    assert all(mask[int(s)] == 0 for s in starts)
    again = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    assert again.skipped and again.meta == outcome.meta


def test_every_jsonl_file_below_a_folder_is_read_and_every_text_token_trains(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    model = build_chat_model(tmp_path / "model", tiny_models, "gemma3", None)
    texts = [f"Herr Kollege {i}, Sie haben das Wort." for i in range(4)]
    write_jsonl(tmp_path / "texts" / "b.jsonl", [{"text": text} for text in texts[2:]])
    write_jsonl(tmp_path / "texts" / "nested" / "a.jsonl", [{"text": text} for text in texts[:2]])
    (tmp_path / "texts" / "notes.txt").write_text("not a record", encoding="utf-8")
    settings = chat_settings(model, "texts") | {"prepare.format": "text"}
    config = load(tmp_path, settings).config

    outcome = prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))

    meta = outcome.meta
    assert meta.record_format is not None and meta.rows is not None
    assert meta.record_format.source_format == "text"
    assert meta.rows.read == 4 and not meta.rows.malformed
    assert meta.trained_tokens == meta.tokens
    tokenizer = load_tokenizer(ModelSource.local(model))
    dataset_dir = config.prepare.dataset_dir
    eos = tokenizer.eos_token_id
    assert eos is not None
    records = [
        *cut_after(prepared_split(dataset_dir, "train")[0], [eos]),
        *cut_after(prepared_split(dataset_dir, "val")[0], [eos]),
    ]
    decoded = sorted(tokenizer.decode(record) for record in records)
    assert decoded == sorted(f"<bos>{text}<eos>" for text in texts)
