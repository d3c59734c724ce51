"""Training tokens for the fine-tuning trainer: each split's records packed into one stream.

A record is tokenized the way the model expects a text to begin (with <bos> where the
tokenizer adds one), then followed by the end-of-sequence token and the dataset's
doc_separator: the model sees every speech end, learns to emit EOS there, and sampling
stops at it. The streams are written to out_dir/packed/{train,val}.bin in the token-file
format of the from-scratch pipeline, so the same BatchSampler draws windows from them
(random or sequential, with exact resume). packed/ is a prepared folder like a dataset's
(see dataset_folder.py): its meta.json, written last, records what the tokens were made
from, and an unchanged dataset is not tokenized again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ml_playground.data import dataset_folder
from ml_playground.data.batches import MASK_DTYPE
from ml_playground.data.dataset_folder import META_FILE, PreparedMeta
from ml_playground.data.jsonl_records import read_token_records
from ml_playground.data.record_split import TRAIN_FILE, VAL_FILE
from ml_playground.data.records import read_texts
from ml_playground.data.rendering import TokenRecord
from ml_playground.data.token_dataset import UINT16_IDS, TokenDType
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import DataError
from ml_playground.progress import byte_progress

PACKED_DIR = "packed"
PACK_VERSION = 1
ENCODE_BATCH = 256
SPLIT_FILES = {"train": TRAIN_FILE, "val": VAL_FILE}


class PackMeta(PreparedMeta):
    """Packed tokens metadata: what they were made from, their dtype and token counts."""

    key: str
    dtype: TokenDType
    tokens: dict[str, int]
    masked: bool = False

    def file_sizes_expected(self) -> Mapping[str, int]:
        itemsize = np.dtype(self.dtype).itemsize
        # A split the counts lack can never match, so the tokens are packed again.
        sizes = {f"{split}.bin": self.tokens.get(split, -1) * itemsize for split in SPLIT_FILES}
        if self.masked:
            sizes |= {mask_name(split): self.tokens.get(split, -1) for split in SPLIT_FILES}
        return sizes


@dataclass(frozen=True)
class PackedDataset:
    train: Path
    val: Path
    dtype: TokenDType
    tokens: dict[str, int]
    train_mask: Path | None = None
    val_mask: Path | None = None


def mask_name(split: str) -> str:
    return f"{split}.mask.bin"


def pack_dataset(
    dataset_dir: Path, tokenizer: HFTokenizer, out_dir: Path, *, separator: str
) -> PackedDataset:
    """Tokenize and pack both splits into out_dir/packed, unless that is already done."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            f"the tokenizer in {dataset_dir / 'tokenizer'} has no end-of-sequence token, so a "
            "fine-tuned model could never learn to stop; use a base model whose tokenizer has one"
        )
    folder = out_dir / PACKED_DIR
    dtype: TokenDType = "uint16" if len(tokenizer) <= UINT16_IDS else "uint32"
    key = _key(dataset_dir, separator, dtype)
    train, val = folder / "train.bin", folder / "val.bin"
    existing = dataset_folder.up_to_date(
        PackMeta, folder, lambda meta: (meta.key, meta.dtype) == (key, dtype)
    )
    if existing is not None:
        return PackedDataset(train, val, dtype, dict(existing.meta.tokens))
    separator_ids = tokenizer.encode(separator, add_special_tokens=False) if separator else []
    tokens: dict[str, int] = {}
    with dataset_folder.replacing(folder) as staged:
        for split, name in SPLIT_FILES.items():
            source = dataset_dir / name
            size = source.stat().st_size if source.is_file() else 0  # missing: read_texts says
            with (
                byte_progress(f"packing {split}", size) as advance,
                staged.open(f"{split}.bin") as out,
            ):
                texts = _advancing(read_texts(source), advance)
                tokens[split] = _write_stream(texts, tokenizer, out, dtype, [eos, *separator_ids])
        staged.commit(PackMeta(key=key, dtype=dtype, tokens=tokens))
    return PackedDataset(train, val, dtype, tokens)


def pack_token_records(dataset_dir: Path, vocab_size: int, out_dir: Path) -> PackedDataset:
    """Pack both splits of a chat records dataset, with their masks, into out_dir/packed,
    unless that is already done."""
    folder = out_dir / PACKED_DIR
    dtype: TokenDType = "uint16" if vocab_size <= UINT16_IDS else "uint32"
    key = _key(dataset_dir, "", dtype)
    masks = {split: folder / mask_name(split) for split in SPLIT_FILES}
    existing = dataset_folder.up_to_date(
        PackMeta, folder, lambda meta: (meta.key, meta.dtype, meta.masked) == (key, dtype, True)
    )
    if existing is None:
        tokens: dict[str, int] = {}
        with dataset_folder.replacing(folder) as staged:
            for split, name in SPLIT_FILES.items():
                with (
                    staged.open(f"{split}.bin") as out,
                    staged.open(mask_name(split)) as mask_out,
                ):
                    tokens[split] = _write_records(
                        read_token_records(dataset_dir / name), out, mask_out, dtype
                    )
            staged.commit(PackMeta(key=key, dtype=dtype, tokens=tokens, masked=True))
    else:
        tokens = dict(existing.meta.tokens)
    return PackedDataset(
        folder / "train.bin", folder / "val.bin", dtype, tokens, masks["train"], masks["val"]
    )


def _write_records(
    records: Iterator[TokenRecord], out: IO[Any], mask_out: IO[Any], dtype: str
) -> int:
    written = 0
    for record in records:
        out.write(np.asarray(record.input_ids, dtype=dtype).tobytes())
        mask_out.write(np.asarray(record.mask(), dtype=MASK_DTYPE).tobytes())
        written += len(record.input_ids)
    return written


def _write_stream(
    texts: Iterator[str], tokenizer: HFTokenizer, out: IO[Any], dtype: str, closing: Sequence[int]
) -> int:
    written = 0
    for batch in _batches(texts, ENCODE_BATCH):
        for ids in tokenizer(batch, add_special_tokens=True)["input_ids"]:
            # Some tokenizers (Llama's with add_eos_token) already close a text with EOS.
            body = ids[:-1] if ids and ids[-1] == closing[0] else ids
            array = np.asarray([*body, *closing], dtype=dtype)
            out.write(array.tobytes())
            written += int(array.size)
    return written


def _advancing(texts: Iterator[str], advance: Callable[[int], object]) -> Iterator[str]:
    """The texts, moving the progress by each one's UTF-8 size (the JSONL's, less its quoting)."""
    for text in texts:
        advance(len(text.encode("utf-8")))
        yield text


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _key(dataset_dir: Path, separator: str, dtype: str) -> str:
    """Changes whenever the dataset (its meta.json covers records and tokenizer) changes."""
    digest = hashlib.sha256()
    digest.update((dataset_dir / META_FILE).read_bytes())
    digest.update(json.dumps([PACK_VERSION, separator, dtype]).encode())
    return digest.hexdigest()
