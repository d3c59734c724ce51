"""A text corpus as a source of the one dataset writer: text files in, token files out.

The corpus is the sources' text concatenated in order, with one rule: a "\\n" goes before
a file when the corpus so far is non-empty and does not already end in one, so the last
line of one file never merges with the first line of the next. Its split rule is by
character: the first `train_split` of the corpus's characters (rounded down) is the train
split, the rest is val, each encoded on its own (split_encoder.py), so no token straddles
the two. Which files are read is sources.py's rule.

Memory stays bounded by a few chunks however large the corpus: files are read in
`chunk_bytes` blocks and decoded incrementally. A first pass hashes the corpus (so an
unchanged text is recognised, `Fingerprint.content_sha256`) and, for the char tokenizer,
collects its characters; the second pass encodes.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml_playground.artifacts import Artifact
from ml_playground.config import ExperimentConfig
from ml_playground.data.dataset_folder import StagedDataset, input_file
from ml_playground.data.dataset_meta import Fingerprint, TokenDType
from ml_playground.data.record_split import SplitCounts
from ml_playground.data.split_encoder import write_character_split
from ml_playground.data.tokenizer import CharTokenizer, TiktokenTokenizer, Tokenizer, TokenizerKind
from ml_playground.data.writer import DatasetPlan, PrepareOutcome, write_dataset
from ml_playground.errors import DataError
from ml_playground.progress import byte_progress

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


class CorpusSettings(Artifact):
    """The inputs besides the text that decide the output; a change means prepare again.
    `encoding` is None for the char tokenizer, which does not depend on it. The chunk
    size is not a setting: the output does not depend on it."""

    kind: TokenizerKind
    encoding: str | None
    train_split: float


def prepare_corpus(
    config: ExperimentConfig, sources: list[Path], *, force: bool = False
) -> PrepareOutcome:
    """Tokenize `sources` into the experiment's dataset_dir with its tokenizer settings
    (again even when up to date, with `force`), and say what happened."""
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
    """Tokenize `sources` into dataset_dir's token files; `vocab_size_limit` is the model's
    configured vocab_size, if any."""
    if not sources:
        raise DataError("no source text files to prepare; name at least one")
    if not 0.0 < train_split < 1.0:
        raise DataError(f"train_split = {train_split} must be between 0 and 1 (exclusive)")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    settings = CorpusSettings(
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

    def plan() -> DatasetPlan:
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

        def write_splits(staged: StagedDataset, dtype: TokenDType) -> SplitCounts:
            digest = hashlib.sha256()

            def pieces(advance: Callable[[int], object]) -> Iterator[str]:
                for raw, text in _corpus(sources, chunk_bytes, advance):
                    digest.update(raw)
                    yield text

            with byte_progress("encoding", total_bytes, enabled=show_progress) as advance:
                counts = write_character_split(
                    pieces(advance),
                    staged,
                    tokenizer,
                    dtype,
                    train_chars=train_chars,
                    max_carry=chunk_bytes,
                )
            if digest.hexdigest() != scan.sha256:
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


def _check_vocab_limit(vocab_size: int, limit: int | None) -> None:
    if limit is not None and vocab_size > limit:
        raise DataError(
            f"train.model.vocab_size = {limit} is smaller than the tokenizer's vocabulary"
            f" ({vocab_size}); raise it to at least {vocab_size} or remove the key"
        )
