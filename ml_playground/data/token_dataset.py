"""Streaming prepare for the from-scratch pipeline: text files in, token files out.

    dataset_dir/train.bin, val.bin   flat token ids (dataset_meta.py's layout)
    dataset_dir/meta.json            `DatasetMeta` with the tokenizer spec and the corpus's
                                     content hash; written last, so a complete meta.json
                                     means complete bins

The corpus is the sources' text concatenated in order, with one rule: a "\\n" goes before
a file when the corpus so far is non-empty and does not already end in one, so the last
line of one file never merges with the first line of the next. The first `train_split`
of the corpus's *characters* (rounded down) is the train split, the rest is val; each
split is encoded on its own, so no token straddles the two.

Memory stays bounded by a few chunks however large the corpus: files are read in
`chunk_bytes` blocks, decoded incrementally, and each block's ids are appended to the
open output files. A first pass hashes the corpus (to skip unchanged inputs) and, for
the char tokenizer, collects its characters; the second pass encodes.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml_playground.artifacts import Artifact
from ml_playground.data import dataset_folder
from ml_playground.data.dataset_folder import input_file
from ml_playground.data.dataset_meta import DatasetMeta, Fingerprint, TokenDType, token_dtype
from ml_playground.data.record_split import token_file
from ml_playground.data.split_encoder import SplitEncoder
from ml_playground.data.tokenizer import (
    CharTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    TokenizerKind,
)
from ml_playground.errors import DataError
from ml_playground.progress import byte_progress

TRAIN_BIN = token_file("train")
VAL_BIN = token_file("val")
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


class PrepareSettings(Artifact):
    """Token dataset settings.

    The inputs besides the text that decide the output; a change means prepare again.
    `encoding` is None for the char tokenizer, which does not depend on it. The chunk
    size is not a setting: the output does not depend on it.
    """

    kind: TokenizerKind
    encoding: str | None
    train_split: float


PrepareOutcome = dataset_folder.PrepareOutcome[DatasetMeta]


def prepare_token_dataset(
    sources: Sequence[Path],
    dataset_dir: Path,
    *,
    tokenizer_kind: TokenizerKind,
    encoding: str = "gpt2",
    train_split: float = 0.9,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    show_progress: bool = True,
    vocab_size_limit: int | None = None,
    force: bool = False,
) -> PrepareOutcome:
    """Tokenize `sources` into dataset_dir/{train.bin,val.bin,meta.json}.

    Skips the work when meta.json already describes the same text and settings and both
    bins are intact, unless `force`. `vocab_size_limit` is the model's configured
    vocab_size, if any.
    """
    if not sources:
        raise DataError("no source text files to prepare; name at least one")
    if not 0.0 < train_split < 1.0:
        raise DataError(f"train_split = {train_split} must be between 0 and 1 (exclusive)")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    settings = PrepareSettings(
        kind=tokenizer_kind,
        encoding=encoding if tokenizer_kind == "tiktoken" else None,
        train_split=train_split,
    )
    inputs = tuple(input_file(path, what="source text") for path in sources)
    total_bytes = sum(entry.size for entry in inputs)

    with byte_progress("scanning", total_bytes, enabled=show_progress) as advance:
        scan = _scan(sources, chunk_bytes, advance, collect_chars=tokenizer_kind == "char")
    fingerprint = Fingerprint(
        inputs=inputs, content_sha256=scan.sha256, settings=settings.to_json()
    )
    existing = dataset_folder.up_to_date(
        DatasetMeta,
        dataset_dir,
        # By content: touching or copying a file changes its mtime, not its text.
        lambda meta: meta.fingerprint.model_copy(update={"inputs": inputs}) == fingerprint,
        force=force,
    )
    if existing is not None:
        _check_vocab_limit(existing.meta.vocab_size, vocab_size_limit)
        return existing

    train_chars = int(scan.chars * train_split)
    if train_chars in (0, scan.chars):
        raise DataError(
            f"corpus too small to split: {scan.chars} characters in {len(sources)} file(s)"
            f" leave {train_chars} for train and {scan.chars - train_chars} for val at"
            f" train_split = {train_split}; add more text"
        )
    tokenizer: Tokenizer = (
        CharTokenizer(sorted(scan.charset))
        if tokenizer_kind == "char"
        else TiktokenTokenizer(encoding)
    )
    _check_vocab_limit(tokenizer.vocab_size, vocab_size_limit)
    dtype = token_dtype(tokenizer.vocab_size)

    with (
        dataset_folder.replacing(dataset_dir) as staged,
        byte_progress("encoding", total_bytes, enabled=show_progress) as advance,
    ):
        train_tokens, val_tokens = _write_bins(
            sources,
            staged,
            tokenizer=tokenizer,
            dtype=dtype,
            train_chars=train_chars,
            chunk_bytes=chunk_bytes,
            advance=advance,
            sha256=scan.sha256,
        )
        meta = DatasetMeta(
            tokenizer=tokenizer.spec,
            vocab_size=tokenizer.vocab_size,
            dtype=dtype,
            tokens={"train": train_tokens, "val": val_tokens},
            masked=False,
            fingerprint=fingerprint,
        )
        staged.commit(meta)
    return PrepareOutcome(
        skipped=False,
        meta=meta,
        message=(
            f"prepared {dataset_dir}: {train_tokens:,} train + {val_tokens:,} val tokens,"
            f" {tokenizer.spec.describe()}, {dtype}"
        ),
    )


# --- reading the corpus -----------------------------------------------------------------


@dataclass(frozen=True)
class _Scan:
    sha256: str
    chars: int
    charset: frozenset[str]


def _scan(
    sources: Sequence[Path],
    chunk_bytes: int,
    advance: Callable[[int], object],
    *,
    collect_chars: bool,
) -> _Scan:
    digest = hashlib.sha256()
    chars = 0
    charset: set[str] = set()
    for raw, text in _corpus(sources, chunk_bytes, advance):
        digest.update(raw)
        chars += len(text)
        if collect_chars:
            charset.update(text)
    return _Scan(sha256=digest.hexdigest(), chars=chars, charset=frozenset(charset))


def _corpus(
    sources: Sequence[Path], chunk_bytes: int, advance: Callable[[int], object]
) -> Iterator[tuple[bytes, str]]:
    """The corpus as (raw bytes, text) pieces, files joined by the separator rule."""
    ends_with_newline = True  # an empty corpus so far needs no separator
    for path in sources:
        first = True
        for raw, text in _file_text(path, chunk_bytes):
            advance(len(raw))
            if first and not ends_with_newline:
                yield b"\n", "\n"
            first = False
            if text:
                ends_with_newline = text.endswith("\n")
            yield raw, text


def _file_text(path: Path, chunk_bytes: int) -> Iterator[tuple[bytes, str]]:
    """One file in binary chunks, decoded without ever splitting a character.

    The incremental decoder holds back the first bytes of a character cut by a chunk
    boundary and completes it with the next chunk.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with path.open("rb") as handle:
            while raw := handle.read(chunk_bytes):
                held_back = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(raw)
                except UnicodeDecodeError as exc:
                    raise _not_utf8(path, offset - held_back + exc.start) from None
                offset += len(raw)
                yield raw, text
            held_back = len(decoder.getstate()[0])
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset - held_back + exc.start) from None
    except OSError as exc:
        raise DataError(f"cannot read source text {path}: {exc.strerror or exc}") from None


def _not_utf8(path: Path, offset: int) -> DataError:
    return DataError(
        f"{path} is not valid UTF-8 at byte {offset}; convert the file to UTF-8 and prepare again"
    )


# --- writing the bins -------------------------------------------------------------------


def _write_bins(
    sources: Sequence[Path],
    staged: dataset_folder.StagedDataset,
    *,
    tokenizer: Tokenizer,
    dtype: TokenDType,
    train_chars: int,
    chunk_bytes: int,
    advance: Callable[[int], object],
    sha256: str,
) -> tuple[int, int]:
    """Encode the corpus into train.bin and val.bin; returns both token counts."""
    digest = hashlib.sha256()
    with (
        staged.open(TRAIN_BIN) as train_out,
        staged.open(VAL_BIN) as val_out,
    ):
        train = SplitEncoder(tokenizer, train_out, dtype, max_carry=chunk_bytes)
        val = SplitEncoder(tokenizer, val_out, dtype, max_carry=chunk_bytes)
        train_left = train_chars
        for raw, text in _corpus(sources, chunk_bytes, advance):
            digest.update(raw)
            head, tail = text[:train_left], text[train_left:]
            train_left -= len(head)
            train.feed(head)
            val.feed(tail)
        if digest.hexdigest() != sha256:
            raise DataError(
                f"source text changed while preparing ({', '.join(map(str, sources))});"
                " prepare again once it is stable"
            )
        return train.finish(), val.finish()


# --- checks and small helpers -----------------------------------------------------------


def _check_vocab_limit(vocab_size: int, limit: int | None) -> None:
    if limit is not None and vocab_size > limit:
        raise DataError(
            f"train.model.vocab_size = {limit} is smaller than the tokenizer's vocabulary"
            f" ({vocab_size}); raise it to at least {vocab_size} or remove the key"
        )
