"""How Ollama must wrap a fine-tuned model's prompt, and what ends a generation.

Decided from what the run was trained on, nothing else: the record format in the run's
meta.json (else the prepared dataset's) and the fine-tuning tokenizer. Records read from a
JSONL shape say which (`source_format`): "messages" went through the tokenizer's chat
template, so the prompt does too; text and prompt_completion records are raw completion.
Records without one are a header, a blank line and the text, framed as the dataset's
`record_opening`, `record_closing` and `stop_tokens` say. With no records at all the
tokenizer's own chat template, if it has one, is left to Ollama.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ml_playground import run_folder
from ml_playground.config import ExperimentConfig
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import RecordFormat, read_meta
from ml_playground.errors import DataError
from ml_playground.export.chat_template import TemplateTokenizer, ollama_chat
from ml_playground.export.modelfile import RAW_COMPLETION
from ml_playground.finetune.hub import ModelSource, load_tokenizer

# What a record without a JSONL shape looks like after its header: a blank line, then the text.
HEADER_END = "\n\n"


@dataclass(frozen=True)
class PromptFormat:
    """How Ollama must wrap a prompt, and what ends a generation, for this model."""

    template: str | None
    stops: tuple[str, ...]
    description: str


def prompt_format(config: ExperimentConfig, tokenizer: Path) -> PromptFormat:
    """The template and stops that reproduce the fine-tuning text."""
    settings = _json_object(tokenizer / "tokenizer_config.json")
    eos = _token_text(settings.get("eos_token"))
    eos_stop = (eos,) if eos else ()
    records = record_format_of(config)
    if records is not None and records.source_format == "messages":
        return chat_format(config, tokenizer, eos_stop)
    if records is not None and records.source_format is not None:
        # Text and prompt_completion records are the prompt's own text (with the
        # tokenizer's BOS, which llama.cpp adds too), then the answer and EOS.
        return PromptFormat(
            template=RAW_COMPLETION,
            stops=eos_stop,
            description=f"Prompt format: raw completion, as the {records.source_format}"
            " records were trained: the model continues your prompt.",
        )
    if records is not None:
        opening = records.record_opening.strip()
        return PromptFormat(
            template=f"{records.record_opening}{RAW_COMPLETION}{HEADER_END}",
            stops=(*records.stop_tokens, *eos_stop),
            description=(
                "Prompt format: header records. Give a record's header lines as the prompt;"
                " the template "
                + (f"opens the record with {opening}, " if opening else "")
                + "adds the blank line, and the model writes the text"
                + (f" until {records.record_closing}." if records.record_closing else ".")
            ),
        )
    if settings.get("chat_template") or (tokenizer / "chat_template.jinja").is_file():
        return PromptFormat(
            template=None,
            stops=eos_stop,
            description="Prompt format: the tokenizer's chat template, which Ollama reads"
            " from the GGUF.",
        )
    return PromptFormat(
        template=RAW_COMPLETION, stops=eos_stop, description="Prompt format: raw completion."
    )


def chat_format(
    config: ExperimentConfig, tokenizer: Path, eos_stop: tuple[str, ...]
) -> PromptFormat:
    """Conversations as fine-tuning rendered them: the tokenizer's chat template, in Go;
    `[export.ollama] template`, when set, instead."""
    if config.export.ollama.template is not None:
        return PromptFormat(
            template=None,
            stops=eos_stop,
            description="Prompt format: chat, with the template set in [export.ollama].",
        )
    hf = config.train.hf_model
    model = hf.model_name if hf is not None else str(tokenizer)
    loaded = load_tokenizer(ModelSource.local(tokenizer))
    chat = ollama_chat(cast(TemplateTokenizer, loaded), model)
    return PromptFormat(
        template=chat.template, stops=(*chat.stops, *eos_stop), description=chat.description
    )


def record_format_of(config: ExperimentConfig) -> RecordFormat | None:
    """How the run's records open and close, which tokens stop them and which JSONL shape
    they came from; None if the run has no records. The run's meta.json says so, else the
    prepared dataset's."""
    out_dir = config.train.runtime.out_dir
    meta = run_folder.read_run_meta_of(out_dir, run_folder.HFRunMeta)
    if meta is not None:
        return meta
    try:
        return read_meta(config.train.data.dataset_dir / META_FILE).record_format
    except DataError:
        return None


def _json_object(path: Path) -> Mapping[str, Any]:
    """A JSON object from `path`; empty when the file is missing or not an object."""
    try:
        raw: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cast(Mapping[str, Any], raw) if isinstance(raw, dict) else {}


def _token_text(value: object) -> str | None:
    """A token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        content = cast(dict[str, object], value).get("content")
        return content if isinstance(content, str) else None
    return None
