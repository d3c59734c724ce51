"""Reading chat records: JSONL files (or a datasets split's rows) in, checked and rendered.

    text                {"text": ...}
    prompt_completion   {"prompt": ..., "completion": ...}
    messages            {"messages": [{"role": ..., "content": ...}, ...]}

Bad rows (not JSON, a missing or empty field, an unknown role, roles out of order, a
template that refuses them) are counted by reason in a `RowCounts`, never guessed at;
a chat template that fails outright is a `DataError` naming the row.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from ml_playground.config import RecordsSourceFormat
from ml_playground.data.rendering import (
    BadRecordError,
    ChatTokenizer,
    TemplateFailedError,
    TokenRecord,
    messages_record,
    prompt_completion_record,
    text_record,
)
from ml_playground.data.table import RowCounts
from ml_playground.errors import ConfigError, DataError

RECORDS_SUFFIX = ".jsonl"
ROLES = ("system", "user", "assistant")


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
        for number, line in _lines(path):
            yield f"{path}:{number}", line


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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError:
        raise DataError(f"{path} is not valid UTF-8; convert it to UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


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


def _text_field(record: Mapping[str, object], key: str) -> str:
    if key not in record:
        raise BadRecordError(f"no {key!r} key")
    value = record[key]
    if not isinstance(value, str):
        raise BadRecordError(f"{key!r} is not a string")
    if not value.strip():
        raise BadRecordError(f"empty {key!r}")
    return value


def _messages(record: Mapping[str, object]) -> list[dict[str, str]]:
    """The messages, checked: known roles, a system message only first, then user and
    assistant taking turns from the user on, non-empty content, an assistant turn."""
    if "messages" not in record:
        raise BadRecordError("no 'messages' key")
    raw = record["messages"]
    if not isinstance(raw, list) or not raw:
        raise BadRecordError("'messages' is not a non-empty list")
    messages: list[dict[str, str]] = []
    for item in typing.cast(list[object], raw):
        if not isinstance(item, Mapping):
            raise BadRecordError("a message is not an object")
        message = typing.cast(Mapping[str, object], item)
        role = message.get("role")
        if role not in ROLES:
            raise BadRecordError("unknown role", f"{role!r}; use one of {', '.join(ROLES)}")
        assert isinstance(role, str)
        content = message.get("content")
        if "content" not in message:
            raise BadRecordError("a message has no content")
        if not isinstance(content, str):
            raise BadRecordError(f"content is {_json_kind(content)}, not a string")
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


def _json_kind(value: object) -> str:
    """What a JSON value is, as a user reads it in the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object"
