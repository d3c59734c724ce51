"""The chat records dataset: JSONL instructions or conversations in, token records out.

    [prepare] records_path   a .jsonl file, or a folder whose .jsonl files are read in
                             sorted order; one JSON object per line, in the shape that
                             `format` names (or [prepare] hf_dataset: the rows of a
                             Hugging Face datasets split, see hf_datasets.py):
                text                {"text": ...}
                prompt_completion   {"prompt": ..., "completion": ...}
                messages            {"messages": [{"role": ..., "content": ...}, ...]}

The folder is dataset_meta.py's: train.bin and val.bin hold every record's ids end to end,
train.mask.bin and val.mask.bin flag the tokens the model learns to predict (the
rendering's trained spans), tokenizer/ is the base model's tokenizer with the chat
template that rendered the records. Which tokens train depends on how the conversation
was rendered (rendering.py: the chat template, or `[prepare] chat_template`, and the
assistant spans), so a prompt token is never a target.

Bad records (not JSON, a missing or empty field, an unknown role, roles out of order, a
template that refuses them) are counted by reason, reported on the console and in
meta.json like the speech path's damage; a source without one usable record is an error.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ml_playground.artifacts import read_user_file
from ml_playground.config import FILE_PROMPT_PREFIX, ExperimentConfig, RecordsSourceFormat
from ml_playground.data import hf_datasets
from ml_playground.data.dataset_folder import InputFile, StagedDataset, input_file
from ml_playground.data.dataset_meta import Fingerprint, RecordFormat, TokenDType
from ml_playground.data.jsonl_records import jsonl_rows, read_records, record_sources
from ml_playground.data.record_split import SplitCounts, SplitRecord, write_split
from ml_playground.data.rendering import ChatTokenizer, TokenRecord
from ml_playground.data.table import RowCounts
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

SHOWN_EXAMPLES = 3


class ChatRecordSettings(RecordSettings):
    """The settings that decide a chat records dataset."""

    source_format: RecordsSourceFormat
    chat_template: str | None


def prepare_chat_records(
    config: ExperimentConfig, load_tokenizer: TokenizerLoader, *, force: bool = False
) -> PrepareOutcome:
    """What a chat experiment's preparer does: prepare (again even when up to date, with
    `force`), then say what happened."""
    outcome = prepare_chat_dataset(config, load_tokenizer, force=force)
    print(outcome.message)
    return outcome


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
    rows, described, inputs, hf_source = _record_rows(config)
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
                    f"needed (one for val): {_summary(counts)}{_examples(counts, '; ')}"
                ),
            )

        def summary(split: SplitCounts) -> SourceReport:
            train = split["train"]
            return SourceReport(
                counts.tally(),
                f"{train.get('trained', 0):,} of {train['tokens']:,} train tokens train; "
                f"{_summary(counts)}{_examples(counts, chr(10) + '  e.g. ')}",
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


def _split_records(records: Iterator[TokenRecord]) -> Iterator[SplitRecord]:
    for record in records:
        trained = sum(end - start for start, end in record.trained_spans)
        yield SplitRecord(record.input_ids, record.mask(), {"trained": trained})


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
