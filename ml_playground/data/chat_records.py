"""The chat records dataset: JSONL instructions or conversations in, token records out.

    [prepare] records_path   a .jsonl file, or a folder whose .jsonl files are read in
                             sorted order; one JSON object per line, in the shape that
                             `format` names (or [prepare] hf_dataset: the rows of a
                             Hugging Face datasets split, see hf_datasets.py):
                text                {"text": ...}
                prompt_completion   {"prompt": ..., "completion": ...}
                messages            {"messages": [{"role": ..., "content": ...}, ...]}

    dataset_dir/train.jsonl, val.jsonl   one JSON object per record: "input_ids" and
                                         "trained_spans", the [start, end) ranges of the
                                         tokens the model learns to predict
    dataset_dir/tokenizer/               the base model's tokenizer (with the chat
                                         template that rendered the records)
    dataset_dir/meta.json                written last (see dataset_folder.py)

Records are tokenized here, not at train time, because which tokens train depends on
how the conversation was rendered (rendering.py: the chat template, or `[prepare]
chat_template`, and the assistant spans). packing.py turns the spans into a mask beside
the token stream, so a prompt token is never a target.

Bad records (not JSON, a missing or empty field, an unknown role, roles out of order, a
template that refuses them) are counted by reason, reported on the console and in
meta.json like the speech path's damage; a source without one usable record is an error.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from ml_playground.artifacts import Artifact, read_user_file
from ml_playground.config import FILE_PROMPT_PREFIX, ExperimentConfig, RecordsSourceFormat
from ml_playground.data import dataset_folder, hf_datasets
from ml_playground.data.dataset_folder import RERUN_HINT, TOKENIZER_DIR, InputFile, input_file
from ml_playground.data.record_split import TRAIN_FILE, VAL_FILE, Line, per_split, write_split
from ml_playground.data.records import (
    HFRecordsMeta,
    SpeechDatasetMeta,
    TokenizerLoader,
    read_dataset_meta,
    require_hf_model,
)
from ml_playground.data.rendering import (
    BadRecordError,
    ChatTokenizer,
    TemplateFailedError,
    TokenRecord,
    messages_record,
    prompt_completion_record,
    text_record,
)
from ml_playground.data.table import RowCounts, RowTally
from ml_playground.errors import ConfigError, DataError

FORMAT_VERSION: Final = 1
RECORD_FORMAT: Final = "token-records-jsonl"
RECORDS_SUFFIX = ".jsonl"
ROLES = ("system", "user", "assistant")
SHOWN_EXAMPLES = 3
# --- reading ------------------------------------------------------------------------------


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


def read_token_records(path: Path) -> Iterator[TokenRecord]:
    """The records of a prepared split, in order."""
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield _prepared_record(json.loads(line))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    raise DataError(
                        f"{path}:{number} is not a token record; {RERUN_HINT}"
                    ) from None
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {path}; {RERUN_HINT}") from None


def _prepared_record(value: Any) -> TokenRecord:
    ids = tuple(int(i) for i in value["input_ids"])
    spans = tuple((int(start), int(end)) for start, end in value["trained_spans"])
    return TokenRecord(ids, spans)


# --- the dataset --------------------------------------------------------------------------


class ChatRecordSettings(Artifact):
    """The settings that decide a chat records dataset."""

    format_version: int
    base_model: str
    revision: str | None
    source_format: RecordsSourceFormat
    chat_template: str | None
    train_split: float
    seed: int


class ChatFingerprint(Artifact):
    inputs: tuple[InputFile, ...]
    # "name[split]@content-hash" of an [prepare] hf_dataset source; None for JSONL files.
    hf_dataset: str | None = None
    settings: ChatRecordSettings


class ChatDatasetMeta(HFRecordsMeta):
    """Chat records dataset metadata.

    Its `source_format` (a RecordFormat field, which a run copies) is always set.
    """

    format_version: Literal[1] = FORMAT_VERSION
    format: Literal["token-records-jsonl"] = RECORD_FORMAT
    tokens: dict[str, int]
    trained_tokens: dict[str, int]
    fingerprint: ChatFingerprint
    rows: RowTally


ChatPrepareOutcome = dataset_folder.PrepareOutcome[ChatDatasetMeta]


def read_records_meta(
    dataset_dir: Path, *, chat: bool = False
) -> SpeechDatasetMeta | ChatDatasetMeta:
    """The meta.json of a records dataset of either kind, told apart by its "format"; one
    that is missing or unreadable is reported as the kind the config asks for (`chat`:
    [prepare] format is set)."""
    path = dataset_dir / dataset_folder.META_FILE
    try:
        peeked: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        peeked = None  # the reader below says what is wrong with the file
    found = (
        typing.cast(dict[str, object], peeked).get("format") if isinstance(peeked, dict) else None
    )
    if found == RECORD_FORMAT or (found is None and chat):
        return dataset_folder.read_meta(ChatDatasetMeta, path)
    return read_dataset_meta(dataset_dir)


def prepare_chat_records(
    config: ExperimentConfig, load_tokenizer: TokenizerLoader, *, force: bool = False
) -> ChatPrepareOutcome:
    """What a chat experiment's preparer does: prepare (again even when up to date, with
    `force`), then say what happened."""
    outcome = prepare_chat_dataset(config, load_tokenizer, force=force)
    print(outcome.message)
    return outcome


def prepare_chat_dataset(
    config: ExperimentConfig, load_tokenizer: TokenizerLoader, *, force: bool = False
) -> ChatPrepareOutcome:
    """Read, render, tokenize and split the records below prepare.records_path."""
    hf = require_hf_model(config)
    prepare = config.prepare
    source_format = prepare.format
    if source_format is None:
        raise ConfigError(
            '[prepare] format is needed for JSONL records: "text", "prompt_completion" or '
            '"messages"'
        )
    rows, described, inputs, hf_source = _record_rows(config)
    template = configured_template(prepare.chat_template)
    dataset_dir = prepare.dataset_dir
    fingerprint = ChatFingerprint(
        inputs=inputs,
        hf_dataset=hf_source,
        settings=ChatRecordSettings(
            format_version=FORMAT_VERSION,
            base_model=hf.model_name,
            revision=hf.revision,
            source_format=source_format,
            chat_template=template,
            train_split=prepare.train_split,
            seed=prepare.seed,
        ),
    )
    existing = dataset_folder.up_to_date(
        ChatDatasetMeta,
        dataset_dir,
        lambda meta: meta.fingerprint == fingerprint and (dataset_dir / TOKENIZER_DIR).is_dir(),
        force=force,
    )
    if existing is not None:
        return existing

    tokenizer = typing.cast(ChatTokenizer, load_tokenizer())
    if template is not None:
        tokenizer.chat_template = template
    if source_format == "messages" and not tokenizer.chat_template:
        raise ConfigError(
            f"the tokenizer of {hf.model_name} has no chat template to render messages with; "
            "set [prepare] chat_template to a Jinja template or FILE:<path of one>"
        )
    counts = RowCounts()
    with dataset_folder.replacing(dataset_dir) as staged:
        split = write_split(
            _split_lines(read_records(rows, source_format, tokenizer, counts)),
            staged,
            train_split=prepare.train_split,
            seed=prepare.seed,
            too_few=lambda usable: DataError(
                f"{usable} usable record(s) in {described}, at least 2 are "
                f"needed (one for val): {_summary(counts)}{_examples(counts, '; ')}"
            ),
        )
        with staged.folder(TOKENIZER_DIR) as folder:
            tokenizer.save_pretrained(str(folder))
        meta = ChatDatasetMeta(
            structure_tokens=(),
            added_tokens=(),
            doc_separator="",
            record_opening="",
            record_closing="",
            stop_tokens=(),
            source_format=source_format,
            base_model=hf.model_name,
            revision=hf.revision,
            vocab_size=len(tokenizer),
            records=per_split(split, "records"),
            tokens=per_split(split, "tokens"),
            trained_tokens=per_split(split, "trained"),
            file_sizes=staged.sizes(TRAIN_FILE, VAL_FILE),
            fingerprint=fingerprint,
            rows=counts.tally(),
        )
        staged.commit(meta)
    return ChatPrepareOutcome(
        skipped=False,
        meta=meta,
        message=(
            f"prepared {dataset_dir}: {split['train']['records']:,} train + "
            f"{split['val']['records']:,} val {source_format} records for {hf.model_name} "
            f"({split['train'].get('trained', 0):,} of {split['train'].get('tokens', 0):,} "
            "train tokens train); "
            f"{_summary(counts)}{_examples(counts, chr(10) + '  e.g. ')}"
        ),
    )


def _record_rows(
    config: ExperimentConfig,
) -> tuple[Iterable[tuple[str, object]], str, tuple[InputFile, ...], str | None]:
    """The rows to read, how to name them, and what identifies them in the fingerprint."""
    prepare = config.prepare
    if prepare.hf_dataset is not None:
        split = hf_datasets.load_split(
            prepare.hf_dataset, prepare.hf_dataset_subset, prepare.hf_dataset_split
        )
        return split.located(), split.label, (), f"{split.label}@{split.fingerprint}"
    sources = record_sources(prepare.records_path)
    inputs = tuple(input_file(path) for path in sources)
    return jsonl_rows(sources), _sources_text(sources), inputs, None


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


def _split_lines(records: Iterator[TokenRecord]) -> Iterator[Line]:
    for record in records:
        fields = {"input_ids": record.input_ids, "trained_spans": record.trained_spans}
        line = json.dumps(fields, separators=(",", ":")) + "\n"
        trained = sum(end - start for start, end in record.trained_spans)
        yield line.encode("utf-8"), {"tokens": len(record.input_ids), "trained": trained}


def _summary(counts: RowCounts) -> str:
    parts = [f"{counts.read:,} records read"]
    if counts.malformed:
        reasons = ", ".join(
            f"{count:,} {reason}" for reason, count in counts.malformed.most_common()
        )
        parts.append(f"{counts.malformed_total:,} bad ({reasons})")
    return "; ".join(parts)


def _examples(counts: RowCounts, joiner: str) -> str:
    return "".join(f"{joiner}{example}" for example in counts.examples[:SHOWN_EXAMPLES])


def _sources_text(sources: Sequence[Path]) -> str:
    return str(sources[0]) if len(sources) == 1 else f"{len(sources)} files"
