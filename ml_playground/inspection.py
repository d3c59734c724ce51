"""`inspect`: a prepared dataset as training will read it, before anything trains.

What the model is trained on is decided in two places: the preparer (which tokens a
record holds, which of them are targets, and how records follow each other in the token
files) and the batcher (which windows of those files a step draws, data/batches.py). This
module opens a prepared dataset's train.bin and val.bin (with their masks) as training
reads them, so `inspect` works before `train` and never writes into dataset_dir or
out_dir. The windows shown are the first ones the run's BatchSampler draws (same seed,
mode and batch size, rank 0).

A record is known by where the prepared split holds it (`dataset_dir/train.bin#N`, the
N-th record) and, for chat records whose source is still at hand, by the source row it
came from (`chats.jsonl:M`, or `name[split]#row` for a Hugging Face dataset): the sources
are rendered again with the dataset's own tokenizer and matched, in order, by their token
ids, which also gives the checks (dataset_checks.py) the rendered text of every
conversation. Speech records, and chat records whose sources are gone, are cut where
their closing run ends (EOS and the doc separator for speeches, EOS for chat records).

Targets are shown apart from the rest: in colour on a terminal, and between the plain
markers TARGET_OPEN and TARGET_CLOSE anywhere else, so `inspect EXP > windows.txt` reads
the same without escape codes.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import typing
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ml_playground.config import ExperimentConfig
from ml_playground.data import hf_datasets, token_dataset
from ml_playground.data.batches import MASK_DTYPE, BatchSampler, open_tokens
from ml_playground.data.dataset_folder import META_FILE, RERUN_HINT, TOKENIZER_DIR
from ml_playground.data.jsonl_records import jsonl_rows, read_records, record_sources
from ml_playground.data.record_split import mask_file, token_file
from ml_playground.data.records_meta import RecordsMeta, read_records_meta
from ml_playground.data.rendering import ChatTokenizer, end_of_turn_ids
from ml_playground.data.table import RowCounts
from ml_playground.data.tokenizer import tokenizer_from_spec
from ml_playground.errors import DataError, UserError

TARGET_OPEN, TARGET_CLOSE = "[[", "]]"
"""The plain markers around target tokens where stdout is not a terminal."""
TARGET_COLOUR, RESET = "\x1b[1;32m", "\x1b[0m"
"""Targets in bold green on a terminal; the other tokens keep the terminal's colour."""
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
class Rendering:
    """A source conversation as the dataset's chat template renders it (for the checks)."""

    where: str
    conversation: str  # the messages as canonical JSON: equal exactly for equal conversations
    text: str


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset opened for inspection."""

    folder: Path
    kind: str  # what the dataset is, in words
    source: str
    source_format: str | None  # "messages", "prompt_completion", "text"; None: not chat records
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
    chat_tokenizer: ChatTokenizer | None
    renderings: tuple[Rendering, ...]
    source_texts: Mapping[str, str]  # where -> the text of rows whose tokens hold unknown ids
    notes: tuple[str, ...] = field(default=())

    def split(self, name: str) -> Split:
        return next(split for split in self.splits if split.name == name)

    def token_name(self, token_id: int) -> str:
        return repr(self.decode([token_id]))


@contextlib.contextmanager
def opened(config: ExperimentConfig, load_tokenizer: TokenizerFolderLoader) -> Generator[Dataset]:
    """The prepared dataset of `config`, as training reads it; never prepares."""
    data = config.train.data
    meta_path = data.dataset_dir / (META_FILE if config.uses_hf_model else data.meta_file)
    if not meta_path.is_file():
        raise DataError(
            f"no prepared dataset to inspect: {meta_path} not found; {RERUN_HINT} first "
            "(inspect reads what prepare wrote and never prepares)"
        )
    if not config.uses_hf_model:
        yield _token_dataset(config, meta_path)
        return
    yield _records_dataset(config, load_tokenizer)


def _token_dataset(config: ExperimentConfig, meta_path: Path) -> Dataset:
    data = config.train.data
    meta = token_dataset.read_meta(meta_path)
    tokenizer = tokenizer_from_spec(meta.tokenizer)
    files = {"train": data.dataset_dir / data.train_bin, "val": data.dataset_dir / data.val_bin}
    splits = tuple(Split(name, _tokens(path, meta.dtype), None, ()) for name, path in files.items())
    eot = tokenizer.eot_id
    return Dataset(
        folder=data.dataset_dir,
        kind="text corpus: one token stream per split, every token a target",
        source=", ".join(meta.sources),
        source_format=None,
        tokenizer=meta.tokenizer.describe(),
        vocab_size=meta.vocab_size,
        dtype=meta.dtype,
        train_file=files["train"],
        train_mask=None,
        splits=splits,
        decode=tokenizer.decode,
        encode=tokenizer.encode,
        closing_ids=frozenset() if eot is None else frozenset({eot}),
        unknown_id=None,  # char vocabularies come from the corpus, BPE is byte-level
        chat_tokenizer=None,
        renderings=(),
        source_texts={},
    )


def _records_dataset(config: ExperimentConfig, load_tokenizer: TokenizerFolderLoader) -> Dataset:
    dataset_dir = config.train.data.dataset_dir
    meta = read_records_meta(dataset_dir)
    tokenizer = load_tokenizer(dataset_dir / TOKENIZER_DIR)
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
    if meta.source_format is not None:
        source_format: str | None = meta.source_format
        sources, renderings, source_texts, note = _rendered_sources(
            config, tokenizer, meta.source_format, unknown
        )
        if note:
            notes.append(note)
        eos_run = [] if eos is None else [eos]
        splits = tuple(_chat_split(dataset_dir, meta, name, sources, eos_run) for name in SPLITS)
        if source_format == "messages":
            closing |= end_of_turn_ids(tokenizer)
        unmatched = sum(1 for s in splits for r in s.records if r.source is None)
        if sources and unmatched:
            notes.append(
                f"{unmatched} prepared record(s) match no source row: the sources changed "
                "since prepare, so prepare again to train on what they hold now"
            )
        kind = f"chat records ({source_format}), end to end in one token file per split"
        source = _source_label(config)
        chat: ChatTokenizer | None = tokenizer
    else:
        source_format = None
        separator = tokenizer.encode(meta.doc_separator, add_special_tokens=False)
        closing_run = [] if eos is None else [eos, *separator]
        splits = tuple(_cut_split(dataset_dir, meta, name, closing_run) for name in SPLITS)
        if any(not split.records for split in splits):
            notes.append(
                "record boundaries not found (a record's text holds the end-of-sequence "
                "token), so records are not told apart"
            )
        kind = "speech records, each closed by EOS and the separator, in one token file per split"
        inputs = meta.source_inputs()
        shown = ", ".join(inputs[:SHOWN_INPUTS])
        more = len(inputs) - SHOWN_INPUTS
        source = shown + (f" (+{more} more)" if more > 0 else "")
        chat = None
    return Dataset(
        folder=dataset_dir,
        kind=kind,
        source=source,
        source_format=source_format,
        tokenizer=f"{meta.base_model} (Hugging Face, {dataset_dir / TOKENIZER_DIR})",
        vocab_size=len(tokenizer),
        dtype=meta.dtype,
        train_file=dataset_dir / token_file("train"),
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


def _split_files(
    dataset_dir: Path, meta: RecordsMeta, name: str
) -> tuple[Path, npt.NDArray[Any], npt.NDArray[Any] | None]:
    path = dataset_dir / token_file(name)
    mask = _mask(dataset_dir / mask_file(name) if meta.masked else None)
    return path, _tokens(path, meta.dtype), mask


def _chat_split(
    dataset_dir: Path,
    meta: RecordsMeta,
    name: str,
    sources: Mapping[tuple[int, ...], list[str]],
    eos_run: Sequence[int],
) -> Split:
    """Records are the source rows found, in order, in the token file; without sources
    (or when they no longer cover it) they are cut after every EOS."""
    path, tokens, mask = _split_files(dataset_dir, meta, name)
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
    if sources and offset == total and len(records) == meta.records.get(name, 0):
        return Split(name, tokens, mask, tuple(records))
    return _cut_split(dataset_dir, meta, name, eos_run)


def _cut_split(dataset_dir: Path, meta: RecordsMeta, name: str, closing: Sequence[int]) -> Split:
    """Records end where their closing run does; when that does not give the number of
    records meta.json counts, the split is left without records."""
    path, tokens, mask = _split_files(dataset_dir, meta, name)
    ends = _closing_ends(tokens, closing)
    if len(ends) != meta.records.get(name, 0) or (ends and ends[-1] != len(tokens)):
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


# --- the sources, rendered again ------------------------------------------------------------


def _source_label(config: ExperimentConfig) -> str:
    prepare = config.prepare
    if prepare.hf_dataset is not None:
        return f"{prepare.hf_dataset} [{prepare.hf_dataset_split}] (Hugging Face dataset)"
    return str(prepare.records_path)


def _rendered_sources(
    config: ExperimentConfig, tokenizer: ChatTokenizer, source_format: str, unknown: int | None
) -> tuple[dict[tuple[int, ...], list[str]], tuple[Rendering, ...], dict[str, str], str | None]:
    """The source rows' token ids (-> where each is), their renderings and the texts of
    rows with unknown ids; with a note instead when the sources cannot be read."""
    try:
        rows = _source_rows(config)
        by_ids: dict[tuple[int, ...], list[str]] = defaultdict(list)
        renderings: list[Rendering] = []
        texts: dict[str, str] = {}
        fmt = typing.cast(Any, source_format)
        for where, raw in rows:
            records = list(read_records([(where, raw)], fmt, tokenizer, RowCounts()))
            if not records:
                continue  # a bad row: prepare counted and reported it
            ids = records[0].input_ids
            by_ids[ids].append(where)
            value = _decoded(raw)
            if source_format == "messages":
                messages = typing.cast(list[dict[str, str]], value["messages"])
                conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
                text = str(tokenizer.apply_chat_template(conversation, tokenize=False))
                renderings.append(Rendering(where, json.dumps(conversation), text))
            if unknown is not None and unknown in ids:
                texts[where] = "".join(_strings(value))
        return dict(by_ids), tuple(renderings), texts, None
    except UserError as exc:
        return (
            {},
            (),
            {},
            f"sources not read ({exc}); their locations and the template check are left out",
        )


def _source_rows(config: ExperimentConfig) -> Iterable[tuple[str, object]]:
    prepare = config.prepare
    if prepare.hf_dataset is not None:
        split = hf_datasets.load_split(
            prepare.hf_dataset, prepare.hf_dataset_subset, prepare.hf_dataset_split
        )
        return list(split.located())
    return list(jsonl_rows(record_sources(prepare.records_path)))


def _decoded(raw: object) -> Mapping[str, Any]:
    value: object = json.loads(raw) if isinstance(raw, str) else raw
    return typing.cast(Mapping[str, Any], value)


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in typing.cast(Mapping[str, object], value).values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in typing.cast(list[object], value):
            yield from _strings(item)


# --- windows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A training window: block_size inputs and the target past the last one."""

    number: int
    start: int
    ids: tuple[int, ...]
    targets: tuple[bool, ...]  # per token: does the loss count it (the first token never)
    record: Record | None

    @property
    def starts_mid_record(self) -> bool:
        return self.record is not None and self.record.start != self.start


def draw_windows(dataset: Dataset, config: ExperimentConfig, count: int) -> list[Window]:
    """The first `count` windows the run's batcher draws from the train split."""
    train, runtime = config.train, config.train.runtime
    sampler = BatchSampler(
        dataset.train_file,
        dataset.dtype,
        train.block_size,
        train.data.batch_size,
        mode=train.data.sampler,
        seed=runtime.seed,
        mask=dataset.train_mask,
    )
    starts: list[int] = []
    while len(starts) < count:
        starts += sampler.next_starts()
    split = dataset.split("train")
    span = train.block_size + 1
    windows: list[Window] = []
    for number, start in enumerate(starts[:count], start=1):
        ids = tuple(int(i) for i in split.tokens[start : start + span])
        if split.mask is None:
            flags = [True] * span
        else:
            flags = [bool(flag) for flag in split.mask[start : start + span]]
        flags[0] = False  # the first token is only read: no window position predicts it
        windows.append(Window(number, start, ids, tuple(flags), split.record_at(start)))
    return windows


def render_window(window: Window, decode: Callable[[Sequence[int]], str], *, colour: bool) -> str:
    """The window's text, its targets marked: coloured, or between the plain markers."""
    pieces: list[str] = []
    for is_target, ids in _runs(window.ids, window.targets):
        text = decode(ids)
        if not is_target:
            pieces.append(text)
        elif colour:
            pieces.append(f"{TARGET_COLOUR}{text}{RESET}")
        else:
            pieces.append(f"{TARGET_OPEN}{text}{TARGET_CLOSE}")
    return "".join(pieces)


def _runs(ids: Sequence[int], flags: Sequence[bool]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens with the same flag, decoded together so that a character split
    over several byte-level tokens reads whole."""
    runs: list[tuple[bool, list[int]]] = []
    for token, flag in zip(ids, flags, strict=True):
        if runs and runs[-1][0] == flag:
            runs[-1][1].append(token)
        else:
            runs.append((flag, [token]))
    return runs


def window_heading(window: Window, count: int) -> str:
    where = ""
    if window.record is not None:
        offset = window.start - window.record.start
        where = f", token {offset + 1} of the record at {window.record.location()}"
    targets = sum(window.targets)
    return (
        f"--- window {window.number}/{count}: train tokens {window.start:,}.."
        f"{window.start + len(window.ids) - 1:,}{where}; {targets} of {len(window.ids) - 1} "
        "predicted tokens are targets ---"
    )


# --- what it is -----------------------------------------------------------------------------


def summary_lines(dataset: Dataset, config: ExperimentConfig) -> list[str]:
    """What the dataset is: source, format, tokenizer, context, counts, record lengths."""
    context = config.train.block_size
    lines = [
        f"dataset    {dataset.folder}",
        f"source     {dataset.source}",
        f"format     {dataset.kind}",
        f"tokenizer  {dataset.tokenizer}, vocabulary {dataset.vocab_size:,}",
        f"context    {context:,} tokens per window ({_block_size_key(config)}); "
        f"{config.train.data.batch_size} windows per batch, {config.train.data.sampler} sampler",
        "",
        f"{'split':<6} {'records':>9} {'tokens':>12} {'targets':>12} {'share':>7}",
    ]
    for split in dataset.splits:
        records = f"{len(split.records):,}" if split.records else "-"
        share = split.targets / len(split.tokens) if len(split.tokens) else 0.0
        lines.append(
            f"{split.name:<6} {records:>9} {len(split.tokens):>12,} {split.targets:>12,} "
            f"{share:>7.1%}"
        )
    lengths = [record.length for split in dataset.splits for record in split.records]
    if lengths:
        array = np.asarray(lengths)
        longer = int(np.count_nonzero(array > context))
        lines += [
            "",
            f"record lengths in tokens: median {int(np.median(array)):,}, "
            f"p90 {int(np.percentile(array, 90)):,}, max {int(array.max()):,}",
            f"{longer:,} of {len(lengths):,} records are longer than the context of {context:,}"
            + (
                ": packing puts records end to end, so windows cut them and no window holds "
                "one whole"
                if longer
                else ""
            ),
        ]
    return lines


def _block_size_key(config: ExperimentConfig) -> str:
    train = config.train
    if train.data.block_size is not None:
        return "train.data.block_size"
    return "train.hf_model.block_size" if train.hf_model else "train.model.block_size"


def legend(*, colour: bool) -> str:
    if colour:
        return f"targets (tokens the loss counts) are {TARGET_COLOUR}bold green{RESET}"
    return (
        f"targets (tokens the loss counts) are between {TARGET_OPEN} and {TARGET_CLOSE}; "
        "the rest is context only"
    )
