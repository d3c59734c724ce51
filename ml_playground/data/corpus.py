"""A text corpus as a source of the one dataset writer: text files in, token files out.

The corpus is the sources' text concatenated in order, with one rule: a "\\n" goes before
a file when the corpus so far is non-empty and does not already end in one, so the last
line of one file never merges with the first line of the next. Its split rule is by
character: the first `train_split` of the corpus's characters (rounded down) is the train
split, the rest is val, each encoded on its own, so no token straddles the two. Which
files are read is sources.py's rule.

Memory stays bounded by a few chunks however large the corpus: files are read in
`chunk_bytes` blocks, decoded incrementally, and encoded in runs (`_encodable_runs`). A
first pass counts the characters (and collects the char tokenizer's) and hashes the
corpus, so an unchanged text is recognised even when its files were touched
(`Fingerprint.content_sha256`); the second pass encodes.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby
from operator import itemgetter
from pathlib import Path

import numpy as np

from ml_playground.config import ExperimentConfig
from ml_playground.data.dataset_folder import StagedDataset, input_file
from ml_playground.data.dataset_meta import Fingerprint, TokenDType
from ml_playground.data.record_split import SPLITS, SplitCounts, token_file
from ml_playground.data.tokenizer import CharTokenizer, TiktokenTokenizer, Tokenizer, TokenizerKind
from ml_playground.data.writer import DatasetPlan, PrepareOutcome, write_dataset
from ml_playground.errors import DataError
from ml_playground.progress import byte_progress

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


def prepare_corpus(
    config: ExperimentConfig, sources: list[Path], *, force: bool = False
) -> PrepareOutcome:
    """`prepare_token_dataset` with the experiment's [prepare] settings; prints the outcome."""
    prepare = config.prepare
    outcome = prepare_token_dataset(
        sources,
        prepare.dataset_dir,
        tokenizer_kind=prepare.tokenizer,
        encoding=prepare.encoding,
        train_split=prepare.train_split,
        chunk_bytes=prepare.chunk_bytes,
        vocab_size_limit=config.train.model.vocab_size,
        force=force,
    )
    print(outcome.message)
    return outcome


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
    """Tokenize `sources` into dataset_dir's token files (again even when up to date, with
    `force`); `vocab_size_limit` is the model's configured vocab_size, if any."""
    if not sources:
        raise DataError("no source text files to prepare; name at least one")
    inputs = tuple(input_file(path, what="source text") for path in sources)
    total_bytes = sum(entry.size for entry in inputs)
    scanned = hashlib.sha256()
    chars = 0
    charset: set[str] = set()
    with byte_progress("scanning", total_bytes, enabled=show_progress) as advance:
        for text in _corpus(sources, chunk_bytes, advance, scanned.update):
            chars += len(text)
            if tokenizer_kind == "char":
                charset.update(text)
    # The settings besides the text that decide the output: the char tokenizer does not
    # depend on `encoding`, and the output does not depend on the chunk size.
    settings = {
        "kind": tokenizer_kind,
        "encoding": encoding if tokenizer_kind == "tiktoken" else None,
        "train_split": train_split,
    }
    fingerprint = Fingerprint(inputs=inputs, content_sha256=scanned.hexdigest(), settings=settings)

    def plan() -> DatasetPlan:
        train_chars = int(chars * train_split)
        if train_chars in (0, chars):
            raise DataError(
                f"corpus too small to split: {chars} characters in {len(sources)} file(s)"
                f" leave {train_chars} for train and {chars - train_chars} for val at"
                f" train_split = {train_split}; add more text"
            )
        tokenizer: Tokenizer = (
            CharTokenizer(sorted(charset))
            if tokenizer_kind == "char"
            else TiktokenTokenizer(encoding)
        )
        _check_vocab_limit(tokenizer.vocab_size, vocab_size_limit)

        def write_splits(staged: StagedDataset, dtype: TokenDType) -> SplitCounts:
            encoded = hashlib.sha256()
            counts: SplitCounts = {split: {"tokens": 0} for split in SPLITS}
            with (
                byte_progress("encoding", total_bytes, enabled=show_progress) as advance,
                staged.open(token_file("train")) as train,
                staged.open(token_file("val")) as val,
            ):
                files = {"train": train, "val": val}
                pieces = _corpus(sources, chunk_bytes, advance, encoded.update)
                # Train's text is all before val's: one group each.
                for split, texts in groupby(_by_split(pieces, train_chars), key=itemgetter(0)):
                    for text in _encodable_runs((text for _, text in texts), chunk_bytes):
                        ids = np.asarray(tokenizer.encode(text), dtype=dtype)
                        files[split].write(ids.tobytes())
                        counts[split]["tokens"] += int(ids.size)
            if encoded.digest() != scanned.digest():
                raise DataError(
                    f"source text changed while preparing ({', '.join(map(str, sources))});"
                    " prepare again once it is stable"
                )
            return counts

        return DatasetPlan(
            tokenizer=tokenizer.spec,
            vocab_size=tokenizer.vocab_size,
            write_splits=write_splits,
            unit="tokens",
        )

    outcome = write_dataset(dataset_dir, fingerprint, plan, force=force)
    if outcome.skipped:
        _check_vocab_limit(outcome.meta.vocab_size, vocab_size_limit)
    return outcome


def _corpus(
    sources: Sequence[Path],
    chunk_bytes: int,
    advance: Callable[[int], object],
    hash_update: Callable[[bytes], object],
) -> Iterator[str]:
    """The corpus's text in pieces, files joined by the separator rule; `hash_update`
    sees every byte of it, separators included."""
    ends_with_newline = True  # an empty corpus so far needs no separator
    for path in sources:
        for index, (raw, text) in enumerate(_file_text(path, chunk_bytes)):
            advance(len(raw))
            if index == 0 and not ends_with_newline:
                hash_update(b"\n")
                yield "\n"
            if text:
                ends_with_newline = text.endswith("\n")
            hash_update(raw)
            yield text


def _file_text(path: Path, chunk_bytes: int) -> Iterator[tuple[bytes, str]]:
    """One file in binary chunks, decoded without ever splitting a character: the decoder
    holds back the first bytes of a character cut by a chunk boundary until the next chunk."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = held_back = 0  # the bytes before this chunk, and those of them held back
    try:
        with path.open("rb") as handle:
            while True:
                raw = handle.read(chunk_bytes)
                held_back = len(decoder.getstate()[0])
                text = decoder.decode(raw, final=not raw)
                if not raw:
                    return
                offset += len(raw)
                yield raw, text
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid UTF-8 at byte {offset - held_back + exc.start}; convert the"
            " file to UTF-8 and prepare again"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read source text {path}: {exc.strerror or exc}") from None


def _by_split(pieces: Iterable[str], train_chars: int) -> Iterator[tuple[str, str]]:
    """(split, text): the first `train_chars` characters are train's, the rest val's."""
    train_left = train_chars
    for text in pieces:
        head, tail = text[:train_left], text[train_left:]
        train_left -= len(head)
        if head:
            yield "train", head
        if tail:
            yield "val", tail


def _encodable_runs(texts: Iterable[str], max_carry: int) -> Iterator[str]:
    """`texts` joined and cut again where encoding the runs separately gives the ids of
    the whole (`_encodable_prefix`); at most `max_carry` characters wait for more text."""
    pending = ""
    for text in texts:
        pending += text
        cut = _encodable_prefix(pending, max_carry)
        if cut:
            yield pending[:cut]
        pending = pending[cut:]
    if pending:
        yield pending


def _encodable_prefix(text: str, max_carry: int) -> int:
    """How much of `text` to encode now, leaving at most `max_carry` characters pending.

    BPE pre-tokenization (the regex of gpt2/r50k, cl100k, o200k) always makes a lone
    "\\n" between two non-whitespace characters a piece boundary, so cutting right after
    such a newline yields exactly the ids of the uncut text. Failing that, the cut goes
    after the last newline, and in text without newlines after everything: the ids at
    such a cut may differ from whole-text encoding, but decoding still gives the text back
    exactly. The char tokenizer is indifferent to where the cuts fall.
    """
    floor = max(len(text) - max_carry - 1, 0)
    last_newline = text.rfind("\n", floor)
    pos = last_newline
    while pos > 0:
        if pos + 1 < len(text) and not text[pos - 1].isspace() and not text[pos + 1].isspace():
            return pos + 1
        pos = text.rfind("\n", floor, pos)
    return last_newline + 1 if last_newline >= 0 else len(text)


def _check_vocab_limit(vocab_size: int, limit: int | None) -> None:
    if limit is not None and vocab_size > limit:
        raise DataError(
            f"train.model.vocab_size = {limit} is smaller than the tokenizer's vocabulary"
            f" ({vocab_size}); raise it to at least {vocab_size} or remove the key"
        )
