"""The meta.json of every prepared dataset (a text corpus, speeches, chat records), and its reader.

    dataset_dir/train.bin, val.bin       flat token ids, end to end: uint16 when the
                                         vocabulary fits (<= 65536 ids), else uint32,
                                         native byte order
    dataset_dir/train.mask.bin, ...      one uint8 flag per token, 1 where it is a target;
                                         only when some tokens are not (chat records)
    dataset_dir/tokenizer/               a Hugging Face tokenizer (the base model's, with
                                         the structure tokens or chat template the records
                                         were made with); absent for char and tiktoken
    dataset_dir/meta.json                written last: `DatasetMeta`

Until 1.0 a format change bumps FORMAT_VERSION, and a folder of an older one is refused
in one line that says to prepare it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import Field

from ml_playground.artifacts import Artifact, parse_artifact, read_json_object
from ml_playground.config import RecordsSourceFormat
from ml_playground.data.dataset_folder import RERUN_HINT, TOKENIZER_DIR, InputFile
from ml_playground.data.record_split import SPLITS, mask_file, token_file
from ml_playground.data.speeches.source import ReadTally
from ml_playground.data.table import RowTally
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.errors import DataError

FORMAT_VERSION: Final = 3
UINT16_IDS = 1 << 16

TokenDType = Literal["uint16", "uint32"]


def token_dtype(vocab_size: int) -> TokenDType:
    """The narrowest token-file dtype that holds every id of the vocabulary."""
    return "uint16" if vocab_size <= UINT16_IDS else "uint32"


class HFTokenizerFolder(Artifact):
    """A Hugging Face tokenizer saved in dataset_dir/tokenizer/, and the model it is of."""

    kind: Literal["hf"] = "hf"
    folder: Literal["tokenizer"] = TOKENIZER_DIR
    base_model: str
    revision: str | None

    def describe(self) -> str:
        return f"{self.base_model} (Hugging Face)"


DatasetTokenizer = Annotated[TokenizerSpec | HFTokenizerFolder, Field(discriminator="kind")]


class RecordFormat(Artifact):
    """How the records of a dataset are framed; a training run copies it into its meta.json.

    `record_opening` is the text every record begins with (a prompt starting with it
    begins as training records did), `record_closing` the text each ends with, and
    `stop_tokens` the tokens besides the tokenizer's EOS that end a generation.
    """

    structure_tokens: tuple[str, ...]
    added_tokens: tuple[str, ...]
    doc_separator: str
    record_opening: str
    record_closing: str
    stop_tokens: tuple[str, ...]
    # The JSONL shape chat records were read from; None for speech records. "messages"
    # went through the tokenizer's chat template, so an exported model's prompt must too.
    source_format: RecordsSourceFormat | None = None

    def record_format(self) -> dict[str, Any]:
        """These fields alone, to pass on: `HFRunMeta(..., **meta.record_format())`."""
        return self.model_dump(include=set(RecordFormat.model_fields))


class Fingerprint(Artifact):
    """The inputs and settings a dataset was made from; another one means prepare again.

    `content_sha256` is a text corpus's content hash (corpus.py says why), `hf_dataset`
    "name[split]@content-hash" of a [prepare] hf_dataset source."""

    inputs: tuple[InputFile, ...]
    content_sha256: str | None = None
    hf_dataset: str | None = None
    settings: dict[str, Any]

    def matches(self, recorded: Fingerprint) -> bool:
        """Whether `recorded` (a meta.json's) describes the same inputs and settings, by
        content where a content hash is known (see above)."""
        if self.content_sha256 is not None:
            return self.model_copy(update={"inputs": recorded.inputs}) == recorded
        return self == recorded


class DatasetMeta(Artifact):
    """Dataset metadata."""

    format_version: Literal[3] = FORMAT_VERSION
    tokenizer: DatasetTokenizer
    vocab_size: int
    dtype: TokenDType
    tokens: dict[str, int]
    masked: bool
    fingerprint: Fingerprint
    record_format: RecordFormat | None = None
    records: dict[str, int] | None = None
    # Per split: the characters of speech records, or the target tokens of chat records.
    characters: dict[str, int] | None = None
    trained_tokens: dict[str, int] | None = None
    rows: ReadTally | RowTally | None = None

    def files_intact(self, dataset_dir: Path) -> bool:
        """Whether dataset_dir holds the tokenizer/ folder (when there is one) and every
        token and mask file, each of the size its token count gives."""
        if self.hf_tokenizer is not None and not (dataset_dir / TOKENIZER_DIR).is_dir():
            return False
        itemsize = np.dtype(self.dtype).itemsize
        sizes = {token_file(split): self.tokens[split] * itemsize for split in SPLITS}
        if self.masked:
            sizes |= {mask_file(split): self.tokens[split] for split in SPLITS}
        return all(
            (file := dataset_dir / name).is_file() and file.stat().st_size == size
            for name, size in sizes.items()
        )

    def source_inputs(self) -> list[str]:
        return [entry.path for entry in self.fingerprint.inputs]

    @property
    def tokenizer_spec(self) -> TokenizerSpec | None:
        return self.tokenizer if isinstance(self.tokenizer, TokenizerSpec) else None

    @property
    def hf_tokenizer(self) -> HFTokenizerFolder | None:
        return self.tokenizer if isinstance(self.tokenizer, HFTokenizerFolder) else None


def read_meta(path: Path) -> DatasetMeta:
    """A prepared dataset's meta.json; a missing or damaged one says how to rebuild it, one
    prepared by an older version says to prepare it again with --force."""
    found = read_json_object(path, what="dataset metadata", error=DataError, remedy=RERUN_HINT)
    version = found.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path.parent} was prepared by an older version of ml-playground "
            f"(format_version {version}, now {FORMAT_VERSION}); run `ml-playground "
            "prepare <experiment> --force` to prepare it again"
        )
    return parse_artifact(DatasetMeta, found, path, error=DataError, remedy=RERUN_HINT)
