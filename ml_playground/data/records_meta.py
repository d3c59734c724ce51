"""The meta.json of a records dataset (speeches and chat records alike), and its reader.

    dataset_dir/train.bin, val.bin       every record's token ids, end to end (a speech
                                         followed by EOS and the doc separator, as the
                                         fine-tuning trainer reads them): uint16 when
                                         the vocabulary fits, else uint32
    dataset_dir/train.mask.bin, ...      one uint8 flag per token, 1 where it is a target;
                                         only when some tokens are not (chat records)
    dataset_dir/tokenizer/               the base model's tokenizer (with the structure
                                         tokens or chat template the records were made with)
    dataset_dir/meta.json                written last: `RecordsMeta`

A folder written before the records were tokenized at prepare time (train.jsonl, or a
meta.json of format_version 1) is refused in one line that says to prepare it again.
Until 1.0 a format change bumps FORMAT_VERSION, and an older folder is refused the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import Field

from ml_playground.artifacts import Artifact, read_json_object
from ml_playground.config import RecordsSourceFormat
from ml_playground.data import dataset_folder
from ml_playground.data.dataset_folder import META_FILE, TOKENIZER_DIR, InputFile, PreparedMeta
from ml_playground.data.record_split import SPLITS, mask_file, token_file
from ml_playground.data.speeches.source import ReadTally
from ml_playground.data.speeches.speech import RECORD_OPENING, SPEECH_END, STRUCTURE_TOKENS
from ml_playground.data.table import RowTally
from ml_playground.data.token_dataset import TokenDType
from ml_playground.errors import DataError

FORMAT_VERSION: Final = 2
# What a records dataset held before format_version 2.
LEGACY_RECORDS = "train.jsonl"
LEGACY_FILES = (LEGACY_RECORDS, "val.jsonl")


class RecordFormat(Artifact):
    """How the records of a dataset are framed; a training run copies it into its meta.json.

    `record_opening` is the text every record begins with (a prompt starting with it
    begins as training records did), `record_closing` the text each ends with, and
    `stop_tokens` the tokens besides the tokenizer's EOS that end a generation. Files
    written before these three existed framed records by the structure tokens alone, so
    when absent they follow from those.
    """

    structure_tokens: tuple[str, ...]
    added_tokens: tuple[str, ...]
    doc_separator: str
    record_opening: str = Field(
        default_factory=lambda data: _speech_framing(bool(data.get("structure_tokens")))[0]
    )
    record_closing: str = Field(
        default_factory=lambda data: _speech_framing(bool(data.get("structure_tokens")))[1]
    )
    stop_tokens: tuple[str, ...] = Field(
        default_factory=lambda data: _speech_framing(bool(data.get("structure_tokens")))[2]
    )
    # The JSONL shape chat records were read from; None for speech records. "messages"
    # went through the tokenizer's chat template, so an exported model's prompt must too.
    source_format: RecordsSourceFormat | None = None

    def record_format(self) -> dict[str, Any]:
        """These fields alone, to pass on: `RunMeta(..., **meta.record_format())`."""
        return self.model_dump(include=set(RecordFormat.model_fields))


def speech_record_format(
    *, structure_tokens: bool, added_tokens: tuple[str, ...] = (), doc_separator: str = "\n\n"
) -> RecordFormat:
    """Speech records: wrapped in <SPEECH_START> ... <SPEECH_END> with structure tokens (the
    end token stops a generation); otherwise a header and text that only EOS ends."""
    opening, closing, stops = _speech_framing(structure_tokens)
    return RecordFormat(
        structure_tokens=STRUCTURE_TOKENS if structure_tokens else (),
        added_tokens=added_tokens,
        doc_separator=doc_separator,
        record_opening=opening,
        record_closing=closing,
        stop_tokens=stops,
    )


def _speech_framing(structure_tokens: bool) -> tuple[str, str, tuple[str, ...]]:
    if structure_tokens:
        return RECORD_OPENING, SPEECH_END, (SPEECH_END,)
    return "", "", ()


class SourceFingerprint(Artifact):
    """The inputs and settings a records dataset was made from; another one means prepare
    again. `hf_dataset` is "name[split]@content-hash" of a [prepare] hf_dataset source."""

    inputs: tuple[InputFile, ...]
    hf_dataset: str | None = None
    settings: dict[str, Any]


class RecordsMeta(RecordFormat, PreparedMeta):
    """Records dataset metadata.

    A records dataset's meta.json: the token files' layout (dtype, tokens per split,
    masked or not), the tokenizer (base model and its folder), the record format, the
    records per split, what happened to the source rows and the source fingerprint."""

    format_version: Literal[2] = FORMAT_VERSION
    base_model: str
    revision: str | None
    tokenizer: Literal["tokenizer"] = TOKENIZER_DIR
    vocab_size: int
    dtype: TokenDType
    masked: bool
    tokens: dict[str, int]
    records: dict[str, int]
    # Per split: the characters of speech records, or the target tokens of chat records.
    characters: dict[str, int] | None = None
    trained_tokens: dict[str, int] | None = None
    fingerprint: SourceFingerprint
    rows: ReadTally | RowTally

    def file_sizes_expected(self) -> Mapping[str, int]:
        itemsize = np.dtype(self.dtype).itemsize
        sizes = {token_file(split): self.tokens[split] * itemsize for split in SPLITS}
        if self.masked:
            sizes |= {mask_file(split): self.tokens[split] for split in SPLITS}
        return sizes

    def source_inputs(self) -> list[str]:
        return [entry.path for entry in self.fingerprint.inputs]


def drop_legacy_files(dataset_dir: Path) -> None:
    """Remove the JSONL records an older version left, once the new folder is committed."""
    for name in LEGACY_FILES:
        (dataset_dir / name).unlink(missing_ok=True)


def read_records_meta(dataset_dir: Path) -> RecordsMeta:
    """The meta.json of a prepared records dataset; a missing or damaged one says how to
    rebuild it, one prepared by an older version says to prepare it again with --force."""
    path = dataset_dir / META_FILE
    if path.is_file():
        remedy = dataset_folder.RERUN_HINT
        found = read_json_object(path, what="dataset meta", error=DataError, remedy=remedy)
        version = found.get("format_version")
        if version != FORMAT_VERSION:
            held = " with train.jsonl" if (dataset_dir / LEGACY_RECORDS).exists() else ""
            raise DataError(
                f"{dataset_dir} was prepared by an older version of ml-playground{held} "
                f"(format_version {version}, now {FORMAT_VERSION}); run `ml-playground "
                "prepare <experiment> --force` to prepare it again"
            )
    return dataset_folder.read_meta(RecordsMeta, path)
