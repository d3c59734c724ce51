"""`inspect`: a prepared dataset as training will read it, before anything trains.

What the model is trained on is decided in two places: the preparer (which tokens a
record holds, which of them are targets, and how records follow each other in the token
files) and the batcher (which windows of those files a step draws, data/batches.py). This
module opens a prepared dataset's train.bin and val.bin (with their masks) as training
reads them, so `inspect` works before `train` and never writes into dataset_dir or
out_dir; inspect_windows.py prints the summary and the first windows the batcher draws.

A record is known by where the prepared split holds it (`dataset_dir/train.bin#N`, the
N-th record) and, for chat records whose source is still at hand, by the source row it
came from (`chats.jsonl:M`, or `name[split]#row` for a Hugging Face dataset): the sources
are rendered again with the dataset's own tokenizer and matched, in order, by their token
ids, which also gives the checks (dataset_checks.py) the rendered text of every
conversation. Speech records, and chat records whose sources are gone, are cut where
their closing run ends (EOS and the doc separator for speeches, EOS for chat records).
"""

from __future__ import annotations

import bisect
import contextlib
import typing
from collections import defaultdict
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.config import ExperimentConfig
from ml_playground.data.batches import MASK_DTYPE, open_tokens
from ml_playground.data.dataset_folder import RERUN_HINT
from ml_playground.data.dataset_meta import DatasetMeta, HFTokenizerFolder, read_meta
from ml_playground.data.record_split import mask_file
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.data.tokenizer import TokenizerSpec, tokenizer_from_spec
from ml_playground.errors import DataError
from ml_playground.inspect_sources import Rendering, rendered_sources, source_label
from ml_playground.sample.chat_prompt import end_of_turn_ids

SPLITS = ("train", "val")
SHOWN_INPUTS = 3  # a speech corpus may have thousands of files; the summary names a few

# How the verb reads an HF tokenizer folder; the caller (pipeline) supplies it, since data/
# never imports the Hugging Face backend that loads one.
TokenizerFolderLoader = Callable[[Path], ChatTokenizer]


@dataclass(frozen=True)
class Record:
    """One record in a split's token file."""

    start: int  # offset of its first token in the stream
    length: int
    where: str  # the prepared split's path#number
    source: str | None = None  # the source row's path:line, when the sources are at hand

    @property
    def end(self) -> int:
        return self.start + self.length

    def location(self) -> str:
        return self.where if self.source is None else f"{self.where} (from {self.source})"


@dataclass(frozen=True)
class Split:
    """One split as training reads it: the token stream, its target mask, its records."""

    name: str
    tokens: npt.NDArray[Any]
    mask: npt.NDArray[Any] | None  # None: every token is a target
    records: tuple[Record, ...]  # empty for a corpus, which is one stream without records

    @property
    def targets(self) -> int:
        return len(self.tokens) if self.mask is None else int(np.count_nonzero(self.mask))

    def record_at(self, offset: int) -> Record | None:
        starts = [record.start for record in self.records]
        index = bisect.bisect_right(starts, offset) - 1
        if index < 0 or offset >= self.records[index].end:
            return None
        return self.records[index]


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset opened for inspection."""

    folder: Path
    kind: str  # what the dataset is, in words
    source: str
    tokenizer: str
    vocab_size: int
    dtype: str
    train_file: Path
    train_mask: Path | None
    splits: tuple[Split, ...]
    decode: Callable[[Sequence[int]], str]
    encode: Callable[[str], list[int]]
    closing_ids: frozenset[int]  # EOS and the template's end-of-turn token: what ends a turn
    unknown_id: int | None
    source_format: str | None = None  # "messages", "prompt_completion", "text"; None: no chat
    chat_tokenizer: ChatTokenizer | None = None
    renderings: tuple[Rendering, ...] = ()
    source_texts: Mapping[str, str] = field(
        default_factory=dict[str, str]
    )  # where -> text of rows with unknown ids
    notes: tuple[str, ...] = ()

    def split(self, name: str) -> Split:
        return next(split for split in self.splits if split.name == name)

    def token_name(self, token_id: int) -> str:
        return repr(self.decode([token_id]))


@contextlib.contextmanager
def opened(config: ExperimentConfig, load_tokenizer: TokenizerFolderLoader) -> Generator[Dataset]:
    """The prepared dataset of `config`, as training reads it; never prepares."""
    data = config.train.data
    meta_path = data.dataset_dir / data.meta_file
    if not meta_path.is_file():
        raise DataError(
            f"no prepared dataset to inspect: {meta_path} not found; {RERUN_HINT} first "
            "(inspect reads what prepare wrote and never prepares)"
        )
    meta = read_meta(meta_path)
    match meta.tokenizer:
        case TokenizerSpec():
            yield _corpus_dataset(config, meta, meta.tokenizer)
        case HFTokenizerFolder():
            yield _records_dataset(config, meta, meta.tokenizer, load_tokenizer)


def _corpus_dataset(config: ExperimentConfig, meta: DatasetMeta, spec: TokenizerSpec) -> Dataset:
    tokenizer = tokenizer_from_spec(spec)
    splits = tuple(Split(name, *_split_files(config, meta, name), ()) for name in SPLITS)
    eot = tokenizer.eot_id
    return Dataset(
        folder=config.train.data.dataset_dir,
        kind="text corpus: one token stream per split, every token a target",
        source=", ".join(meta.source_inputs()),
        tokenizer=spec.describe(),
        vocab_size=meta.vocab_size,
        dtype=meta.dtype,
        train_file=_split_path(config, "train"),
        train_mask=None,
        splits=splits,
        decode=tokenizer.decode,
        encode=tokenizer.encode,
        closing_ids=frozenset() if eot is None else frozenset({eot}),
        unknown_id=None,  # char vocabularies come from the corpus, BPE is byte-level
    )


def _records_dataset(
    config: ExperimentConfig,
    meta: DatasetMeta,
    folder: HFTokenizerFolder,
    load_tokenizer: TokenizerFolderLoader,
) -> Dataset:
    dataset_dir = config.train.data.dataset_dir
    tokenizer = load_tokenizer(dataset_dir / folder.folder)
    eos = tokenizer.eos_token_id
    unknown = typing.cast(int | None, getattr(tokenizer, "unk_token_id", None))
    if unknown is not None and unknown in (eos, tokenizer.bos_token_id):
        # GPT-2-style byte-level tokenizers name their end-of-text token as the unknown one
        # too; they have a token for every byte, so no character ever maps to it.
        unknown = None
    closing = {eos} if eos is not None else set[int]()
    notes: list[str] = []
    renderings: tuple[Rendering, ...] = ()
    source_texts: dict[str, str] = {}
    record_format = meta.record_format
    source_format = None if record_format is None else record_format.source_format
    if source_format is not None:
        sources, renderings, source_texts, note = rendered_sources(
            config, tokenizer, source_format, unknown
        )
        if note:
            notes.append(note)
        eos_run = [] if eos is None else [eos]
        splits = tuple(_chat_split(config, meta, name, sources, eos_run) for name in SPLITS)
        if source_format == "messages":
            closing |= end_of_turn_ids(tokenizer)
        unmatched = sum(1 for s in splits for r in s.records if r.source is None)
        if sources and unmatched:
            notes.append(
                f"{unmatched} prepared record(s) match no source row: the sources changed "
                "since prepare, so prepare again to train on what they hold now"
            )
        kind = f"chat records ({source_format}), end to end in one token file per split"
        source = source_label(config)
        chat: ChatTokenizer | None = tokenizer
    else:
        doc_separator = "" if record_format is None else record_format.doc_separator
        separator = tokenizer.encode(doc_separator, add_special_tokens=False)
        closing_run = [] if eos is None else [eos, *separator]
        splits = tuple(_cut_split(config, meta, name, closing_run) for name in SPLITS)
        if any(not split.records for split in splits):
            notes.append(
                "record boundaries not found (a record's text holds the end-of-sequence "
                "token), so records are not told apart"
            )
        kind = "speech records, each closed by EOS and the separator, in one token file per split"
        inputs = meta.source_inputs()
        more = len(inputs) - SHOWN_INPUTS
        source = ", ".join(inputs[:SHOWN_INPUTS]) + (f" (+{more} more)" if more > 0 else "")
        chat = None
    return Dataset(
        folder=dataset_dir,
        kind=kind,
        source=source,
        source_format=source_format,
        tokenizer=f"{folder.base_model} (Hugging Face, {dataset_dir / folder.folder})",
        vocab_size=len(tokenizer),
        dtype=meta.dtype,
        train_file=_split_path(config, "train"),
        train_mask=dataset_dir / mask_file("train") if meta.masked else None,
        splits=splits,
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False),
        encode=lambda text: tokenizer.encode(text, add_special_tokens=False),
        closing_ids=frozenset(closing),
        unknown_id=unknown,
        chat_tokenizer=chat,
        renderings=renderings,
        source_texts=source_texts,
        notes=tuple(notes),
    )


def _tokens(path: Path, dtype: str) -> npt.NDArray[Any]:
    # The one reader of token files: a damaged one reads here as it does in train and eval.
    return open_tokens(path, dtype)


def _mask(path: Path | None) -> npt.NDArray[Any] | None:
    return None if path is None else np.memmap(path, dtype=MASK_DTYPE, mode="r")


def _split_path(config: ExperimentConfig, name: str) -> Path:
    data = config.train.data
    return data.dataset_dir / (data.train_bin if name == "train" else data.val_bin)


def _split_files(
    config: ExperimentConfig, meta: DatasetMeta, name: str
) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """A split's tokens and, when masked, its target flags."""
    dataset_dir = config.train.data.dataset_dir
    mask = _mask(dataset_dir / mask_file(name) if meta.masked else None)
    return _tokens(_split_path(config, name), meta.dtype), mask


def _chat_split(
    config: ExperimentConfig,
    meta: DatasetMeta,
    name: str,
    sources: Mapping[tuple[int, ...], list[str]],
    eos_run: Sequence[int],
) -> Split:
    """Records are the source rows found, in order, in the token file; without sources
    (or when they no longer cover it) they are cut after every EOS."""
    path = _split_path(config, name)
    tokens, mask = _split_files(config, meta, name)
    unclaimed = {ids: list(wheres) for ids, wheres in sources.items()}
    by_first: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for ids in sorted(sources, key=len, reverse=True):
        if ids:
            by_first[ids[0]].append(ids)
    records: list[Record] = []
    offset, total = 0, len(tokens)
    while sources and offset < total:
        found = next(
            (
                ids
                for ids in by_first.get(int(tokens[offset]), [])
                if offset + len(ids) <= total
                and tuple(int(t) for t in tokens[offset : offset + len(ids)]) == ids
            ),
            None,
        )
        if found is None:
            break
        wheres = unclaimed[found]
        where = wheres.pop(0) if wheres else None
        records.append(Record(offset, len(found), f"{path}#{len(records) + 1}", where))
        offset += len(found)
    if sources and offset == total and len(records) == (meta.records or {}).get(name, 0):
        return Split(name, tokens, mask, tuple(records))
    return _cut_split(config, meta, name, eos_run)


def _cut_split(
    config: ExperimentConfig, meta: DatasetMeta, name: str, closing: Sequence[int]
) -> Split:
    """Records end where their closing run does; when that does not give the number of
    records meta.json counts, the split is left without records."""
    path = _split_path(config, name)
    tokens, mask = _split_files(config, meta, name)
    ends = _closing_ends(tokens, closing)
    if len(ends) != (meta.records or {}).get(name, 0) or (ends and ends[-1] != len(tokens)):
        return Split(name, tokens, mask, ())
    starts = [0, *ends[:-1]]
    records = tuple(
        Record(start, end - start, f"{path}#{number}")
        for number, (start, end) in enumerate(zip(starts, ends, strict=True), start=1)
    )
    return Split(name, tokens, mask, records)


def _closing_ends(tokens: npt.NDArray[Any], closing: Sequence[int]) -> list[int]:
    if not closing:
        return []
    width = len(closing)
    candidates = np.flatnonzero(np.asarray(tokens) == closing[0])
    ends: list[int] = []
    for position in candidates:
        stop = int(position) + width
        if stop <= len(tokens) and [int(t) for t in tokens[position:stop]] == list(closing):
            ends.append(stop)
    return ends
