"""The chat records dataset: JSONL instructions or conversations in, token records out.

    [prepare] records_path   a .jsonl file, or a folder whose .jsonl files are read in
                             sorted order; one JSON object per line, in the shape that
                             `[prepare] format` names (or [prepare] hf_dataset: the rows of
                             a Hugging Face datasets split, see hf_datasets.py):
                text                {"text": ...}
                prompt_completion   {"prompt": ..., "completion": ...}
                messages            {"messages": [{"role": ..., "content": ...}, ...]}

rendering.py's trained spans become the masks, so a prompt token is never a target. Bad
rows (not JSON, a missing or empty field, bad roles, a template that refuses them) are
counted by reason, never guessed at, and reported on the console and in meta.json; a
chat template that fails outright is a DataError naming the row.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ml_playground.artifacts import read_user_file
from ml_playground.config import FILE_PROMPT_PREFIX, ExperimentConfig, RecordsSourceFormat
from ml_playground.data import hf_datasets
from ml_playground.data.dataset_folder import InputFile, StagedDataset, input_file
from ml_playground.data.dataset_meta import Fingerprint, RecordFormat, TokenDType
from ml_playground.data.record_split import SplitCounts, SplitRecord, write_split
from ml_playground.data.rendering import (
    BadRecordError,
    ChatTokenizer,
    TemplateFailedError,
    TokenRecord,
    messages_record,
    prompt_completion_record,
    text_record,
)
from ml_playground.data.table import RowCounts, counted
from ml_playground.data.writer import (
    DatasetPlan,
    PrepareOutcome,
    RecordSettings,
    SourceReport,
    TokenizerLoader,
    hf_tokenizer_folder,
    require_hf_model,
    write_dataset,
)
from ml_playground.errors import ConfigError, DataError

RECORDS_SUFFIX = ".jsonl"
ROLES = ("system", "user", "assistant")
# What a JSON value is, as a user reads it in the file; any other value is an object.
JSON_KINDS: Mapping[type, str] = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
}


class ChatRecordSettings(RecordSettings):
    """The settings that decide a chat records dataset."""

    source_format: RecordsSourceFormat
    chat_template: str | None


def prepare_chat_dataset(
    config: ExperimentConfig, load_tokenizer: TokenizerLoader, *, force: bool = False
) -> PrepareOutcome:
    """Read, render, tokenize and split the records below prepare.records_path."""
    hf = require_hf_model(config)
    prepare = config.prepare
    source_format = prepare.format
    if source_format is None:
        raise ConfigError(
            '[prepare] format is needed for JSONL records: "text", "prompt_completion" or '
            '"messages"'
        )
    rows, described, inputs, hf_source = record_rows(config)
    template = configured_template(prepare.chat_template)
    fingerprint = Fingerprint(
        inputs=inputs,
        hf_dataset=hf_source,
        settings=ChatRecordSettings(
            **ChatRecordSettings.shared(config), source_format=source_format, chat_template=template
        ).to_json(),
    )
    counts = RowCounts()

    def plan() -> DatasetPlan:
        tokenizer = typing.cast(ChatTokenizer, load_tokenizer())
        if template is not None:
            tokenizer.chat_template = template
        if source_format == "messages" and not tokenizer.chat_template:
            raise ConfigError(
                f"the tokenizer of {hf.model_name} has no chat template to render messages "
                "with; set [prepare] chat_template to a Jinja template or FILE:<path of one>"
            )

        def write_splits(staged: StagedDataset, dtype: TokenDType) -> SplitCounts:
            return write_split(
                _split_records(read_records(rows, source_format, tokenizer, counts)),
                staged,
                dtype=dtype,
                masked=True,
                train_split=prepare.train_split,
                seed=prepare.seed,
                too_few=lambda usable: DataError(
                    f"{usable} usable record(s) in {described}, at least 2 are "
                    f"needed (one for val): {_summary(counts, '; ')}"
                ),
            )

        def summary(split: SplitCounts) -> SourceReport:
            train = split["train"]
            return SourceReport(
                counts.tally(),
                f"{train.get('trained', 0):,} of {train['tokens']:,} train tokens train; "
                f"{_summary(counts)}",
            )

        return DatasetPlan(
            tokenizer=hf_tokenizer_folder(config),
            vocab_size=len(tokenizer),
            write_splits=write_splits,
            unit=f"{source_format} records",
            masked=True,
            hf_tokenizer=tokenizer,
            record_format=chat_record_format(source_format),
            report=summary,
        )

    return write_dataset(prepare.dataset_dir, fingerprint, plan, force=force)


def chat_record_format(source_format: RecordsSourceFormat) -> RecordFormat:
    """Chat records: framed by the tokenizer's template and EOS, not by text of their own."""
    return RecordFormat(
        structure_tokens=(),
        added_tokens=(),
        doc_separator="",
        record_opening="",
        record_closing="",
        stop_tokens=(),
        source_format=source_format,
    )


class RecordRows(NamedTuple):
    """The rows to read (each with where it is), how messages name them, and what
    identifies them in the fingerprint: the files, or a datasets split's label and hash."""

    rows: Iterable[tuple[str, object]]
    described: str
    inputs: tuple[InputFile, ...]
    hf_dataset: str | None


def record_rows(config: ExperimentConfig) -> RecordRows:
    """The rows of [prepare] hf_dataset, else of the .jsonl files of records_path."""
    prepare = config.prepare
    if prepare.hf_dataset is not None:
        split = hf_datasets.load_split(
            prepare.hf_dataset, prepare.hf_dataset_subset, prepare.hf_dataset_split
        )
        return RecordRows(split.rows, split.label, (), f"{split.label}@{split.fingerprint}")
    sources = record_sources(prepare.records_path)
    described = str(sources[0]) if len(sources) == 1 else f"{len(sources)} files"
    return RecordRows(jsonl_rows(sources), described, tuple(map(input_file, sources)), None)


def configured_template(value: str | None) -> str | None:
    """[prepare] chat_template: a Jinja template, or FILE:<path> of one (None: not set)."""
    if value is None:
        return None
    if value.startswith(FILE_PROMPT_PREFIX):
        path = Path(value[len(FILE_PROMPT_PREFIX) :])
        return read_user_file(
            path, what="chat template", error=ConfigError, remedy="fix [prepare] chat_template"
        )
    if "{{" not in value and "{%" not in value:
        raise ConfigError(
            f"[prepare] chat_template = {value!r} is not a Jinja template; give the template "
            "itself or FILE:<path of one>"
        )
    return value


def _split_records(records: Iterator[TokenRecord]) -> Iterator[SplitRecord]:
    for record in records:
        trained = sum(end - start for start, end in record.trained_spans)
        yield SplitRecord(record.input_ids, record.mask(), {"trained": trained})


def _summary(counts: RowCounts, examples_joiner: str = "\n  e.g. ") -> str:
    """The counts by reason, then the first few bad rows, each after `examples_joiner`."""
    summary = f"{counts.read:,} records read"
    if counts.malformed:
        summary += f"; {counts.malformed_total:,} bad ({counted(counts.malformed)})"
    return summary + counts.shown_examples(examples_joiner)


def record_sources(records_path: Path | None) -> list[Path]:
    """The .jsonl files to read: records_path itself, or those below it, sorted."""
    if records_path is None:
        raise ConfigError(
            "[prepare] format reads records and needs [prepare] records_path (a .jsonl file "
            "or a folder of them) or [prepare] hf_dataset (a Hugging Face datasets dataset)"
        )
    if records_path.is_file():
        return [records_path]
    if not records_path.is_dir():
        raise DataError(f"prepare.records_path {records_path} does not exist; fix the path")
    files = sorted(path for path in records_path.rglob(f"*{RECORDS_SUFFIX}") if path.is_file())
    if not files:
        raise DataError(f"no {RECORDS_SUFFIX} files below prepare.records_path {records_path}")
    return files


def jsonl_rows(sources: Sequence[Path]) -> Iterator[tuple[str, object]]:
    """Each non-blank line of the files with where it is, as `path:line`."""
    for path in sources:
        try:
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        yield f"{path}:{number}", line
        except UnicodeDecodeError:
            raise DataError(f"{path} is not valid UTF-8; convert it to UTF-8") from None
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_records(
    rows: Iterable[tuple[str, object]],
    source_format: RecordsSourceFormat,
    tokenizer: ChatTokenizer,
    counts: RowCounts,
) -> Iterator[TokenRecord]:
    """The usable records among `rows` (JSON lines, or rows a dataset already decoded),
    rendered; every other row is counted in `counts` under where it is."""
    for where, raw in rows:
        counts.read += 1
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
            yield _token_record(value, source_format, tokenizer)
        except json.JSONDecodeError:
            counts.add_malformed(where, "not JSON")
        except BadRecordError as bad:
            counts.add_malformed(where, bad.reason, bad.detail)
        except TemplateFailedError as failed:
            raise DataError(f"{where}: {failed}") from None


def _token_record(
    value: object, source_format: RecordsSourceFormat, tokenizer: ChatTokenizer
) -> TokenRecord:
    if not isinstance(value, Mapping):
        raise BadRecordError("not a JSON object")
    record = typing.cast(Mapping[str, object], value)
    if source_format == "text":
        return text_record(tokenizer, _text_field(record, "text"))
    if source_format == "prompt_completion":
        prompt, completion = _text_field(record, "prompt"), _text_field(record, "completion")
        return prompt_completion_record(tokenizer, prompt, completion)
    return messages_record(tokenizer, _messages(record))


def _field(record: Mapping[str, object], key: str) -> object:
    if key not in record:
        raise BadRecordError(f"no {key!r} key")
    return record[key]


def _text_field(record: Mapping[str, object], key: str) -> str:
    value = _field(record, key)
    if not isinstance(value, str):
        raise BadRecordError(f"{key!r} is not a string")
    if not value.strip():
        raise BadRecordError(f"empty {key!r}")
    return value


def _messages(record: Mapping[str, object]) -> list[dict[str, str]]:
    """The messages, checked: known roles, a system message only first, then user and
    assistant taking turns from the user on, non-empty content, an assistant turn."""
    raw = _field(record, "messages")
    if not isinstance(raw, list) or not raw:
        raise BadRecordError("'messages' is not a non-empty list")
    messages: list[dict[str, str]] = []
    for item in typing.cast(list[object], raw):
        if not isinstance(item, Mapping):
            raise BadRecordError("a message is not an object")
        message = typing.cast(Mapping[str, object], item)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRecordError("unknown role", f"{role!r}; use one of {', '.join(ROLES)}")
        if "content" not in message:
            raise BadRecordError("a message has no content")
        content = message["content"]
        if not isinstance(content, str):
            kind = JSON_KINDS.get(type(content), "an object")
            raise BadRecordError(f"content is {kind}, not a string")
        if not content.strip():
            raise BadRecordError("empty content")
        messages.append({"role": role, "content": content})
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ("user", "assistant")
    if any(m["role"] != expected[i % 2] for i, m in enumerate(turns)):
        raise BadRecordError("roles out of order", "user and assistant take turns, the user first")
    if not any(m["role"] == "assistant" for m in turns):
        raise BadRecordError("no assistant turn")
    return messages
