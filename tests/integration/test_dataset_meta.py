"""One meta.json schema for every prepared dataset: a text corpus, speeches, chat records."""

from __future__ import annotations

from pathlib import Path

from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import (
    FORMAT_VERSION,
    HFTokenizerFolder,
    read_meta,
)
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from tests.experiments import char_gpt, chat_settings, load, prepare, speeches_lora
from tests.finetune_helpers import (
    QWEN2_TEMPLATE,
    TinyModels,
    build_chat_model,
    conversation,
    write_jsonl,
)


def test_corpus_speech_and_chat_folders_read_through_the_one_meta_reader(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    corpus = char_gpt(tmp_path / "corpus")
    prepare(corpus)
    speeches = speeches_lora(tmp_path / "speeches", tiny_models.gemma3)
    chat_model = build_chat_model(tmp_path / "model", tiny_models, "qwen2", QWEN2_TEMPLATE)
    chats = [conversation(f"Frage {i}?", f"Antwort {i}.") for i in range(6)]
    write_jsonl(tmp_path / "chat" / "chats.jsonl", chats)
    chat = load(tmp_path / "chat", chat_settings(chat_model))
    prepare_chat_dataset(chat.config, lambda: load_tokenizer(ModelSource.local(chat_model)))

    folders = [loaded.config.prepare.dataset_dir for loaded in (corpus, speeches, chat)]
    corpus_meta, speech_meta, chat_meta = (read_meta(folder / META_FILE) for folder in folders)

    for folder, meta in zip(folders, (corpus_meta, speech_meta, chat_meta), strict=True):
        assert meta.format_version == FORMAT_VERSION
        assert meta.files_intact(folder)
        assert sum(meta.tokens.values()) > 0
    assert isinstance(corpus_meta.tokenizer, TokenizerSpec)
    assert corpus_meta.tokenizer.kind == "char"
    assert corpus_meta.record_format is None and corpus_meta.records is None
    assert corpus_meta.fingerprint.content_sha256 is not None and not corpus_meta.masked
    assert speech_meta.tokenizer == HFTokenizerFolder(
        base_model=str(tiny_models.gemma3), revision=None
    )
    assert speech_meta.record_format is not None
    assert speech_meta.record_format.source_format is None and not speech_meta.masked
    assert chat_meta.hf_tokenizer is not None and chat_meta.tokenizer_spec is None
    assert chat_meta.record_format is not None
    assert chat_meta.record_format.source_format == "messages" and chat_meta.masked
    assert chat_meta.records is not None and sum(chat_meta.records.values()) == 6
