"""The fine-tuning dataset: speeches in, training records and the tokenizer out.

    dataset_dir/train.jsonl, val.jsonl   one JSON object per speech: "text" (header,
                                         blank line, speech; see records.py) and the known
                                         fields (speaker, party, date, period, origin)
    dataset_dir/tokenizer/               the base model's tokenizer, with the structure
                                         tokens added when add_structure_tokens is on
    dataset_dir/meta.json                written last: base model, added tokens, record
                                         format, counts, what happened to every input row,
                                         and the fingerprint of inputs and settings

Idempotent like the from-scratch prepare: when meta.json records the same inputs and
settings and both jsonl files have the sizes it recorded, nothing is done. Inputs are
fingerprinted by path, size and modification time rather than a content hash, because
speech CSVs run to gigabytes and hashing them would cost a full extra read.

The split is by speech and seeded: each speech goes to val with probability
1 - train_split, drawn from random.Random(seed) in input order; at least one speech lands
in each split.
"""

from __future__ import annotations

import itertools
import json
import random
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from ml_playground import atomic
from ml_playground.config import ExperimentConfig, HFModelConfig
from ml_playground.data.speeches.selection import Selection
from ml_playground.data.speeches.source import (
    ReadReport,
    auxiliary_files,
    read_speeches,
    select,
    speech_sources,
)
from ml_playground.data.speeches.speech import STRUCTURE_TOKENS, Speech, format_record
from ml_playground.data.token_dataset import read_meta_json
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import ConfigError, DataError

FORMAT_VERSION = 1
RECORD_FORMAT = "speech-records-jsonl"
TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
TOKENIZER_DIR = "tokenizer"
META_FILE = "meta.json"
RERUN_HINT = "run `ml-playground prepare <experiment>` again"
SHOWN_EXAMPLES = 3

# The caller, which may import the Hugging Face backend, decides how a tokenizer is had.
TokenizerLoader = Callable[[], HFTokenizer]


@dataclass(frozen=True)
class DatasetMeta:
    """What meta.json says about a prepared fine-tuning dataset."""

    base_model: str
    revision: str | None
    structure_tokens: tuple[str, ...]
    added_tokens: tuple[str, ...]
    vocab_size: int
    doc_separator: str
    records: Mapping[str, int]
    characters: Mapping[str, int]
    file_sizes: Mapping[str, int]
    fingerprint: Mapping[str, Any]
    report: Mapping[str, Any]
    format_version: int = FORMAT_VERSION
    format: str = RECORD_FORMAT

    def to_json(self) -> dict[str, object]:
        return {
            "format_version": self.format_version,
            "format": self.format,
            "base_model": self.base_model,
            "revision": self.revision,
            "tokenizer": TOKENIZER_DIR,
            "structure_tokens": list(self.structure_tokens),
            "added_tokens": list(self.added_tokens),
            "vocab_size": self.vocab_size,
            "doc_separator": self.doc_separator,
            "records": dict(self.records),
            "characters": dict(self.characters),
            "file_sizes": dict(self.file_sizes),
            "fingerprint": dict(self.fingerprint),
            "rows": dict(self.report),
        }

    @classmethod
    def from_json(cls, obj: object, source: Path) -> DatasetMeta:
        fields = _mapping(obj, source)
        if fields.get("format_version") != FORMAT_VERSION or fields.get("format") != RECORD_FORMAT:
            raise _meta_error(source, f"it is not a {RECORD_FORMAT} v{FORMAT_VERSION} dataset")
        revision = fields.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise _meta_error(source, "'revision' must be a string or null")
        return cls(
            base_model=_typed(fields, "base_model", str, source),
            revision=revision,
            structure_tokens=tuple(_strings(fields, "structure_tokens", source)),
            added_tokens=tuple(_strings(fields, "added_tokens", source)),
            vocab_size=_typed(fields, "vocab_size", int, source),
            doc_separator=_typed(fields, "doc_separator", str, source),
            records=_counts(fields, "records", source),
            characters=_counts(fields, "characters", source),
            file_sizes=_counts(fields, "file_sizes", source),
            fingerprint=_mapping(fields.get("fingerprint"), source),
            report=_mapping(fields.get("rows"), source),
        )


def read_dataset_meta(dataset_dir: Path) -> DatasetMeta:
    """The meta.json of a prepared dataset; missing or damaged ones say how to rebuild."""
    path = dataset_dir / META_FILE
    return DatasetMeta.from_json(read_meta_json(path), path)


def read_texts(path: Path) -> Iterator[str]:
    """The "text" of every record in a jsonl file, in order."""
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record: object = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"{path}:{number} is not JSON; {RERUN_HINT}") from None
                text = (
                    typing.cast(Mapping[str, object], record).get("text")
                    if isinstance(record, Mapping)
                    else None
                )
                if not isinstance(text, str):
                    raise DataError(f"{path}:{number} has no text field; {RERUN_HINT}")
                yield text
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {path}; {RERUN_HINT}") from None


@dataclass(frozen=True)
class PrepareOutcome:
    skipped: bool
    meta: DatasetMeta
    message: str


def prepare_speeches(
    config: ExperimentConfig, suffixes: frozenset[str], load_tokenizer: TokenizerLoader
) -> PrepareOutcome:
    """What an experiment's preparer does: find the sources, prepare, say what happened."""
    outcome = prepare_speech_dataset(
        config, speech_sources(config.prepare, suffixes), load_tokenizer
    )
    print(outcome.message)
    return outcome


def prepare_speech_dataset(
    config: ExperimentConfig,
    sources: Sequence[Path],
    load_tokenizer: TokenizerLoader,
    *,
    show_progress: bool = True,
) -> PrepareOutcome:
    """Read, select, format and split the speeches in `sources` into prepare.dataset_dir.

    `load_tokenizer` gives the base model's tokenizer; it is called only when the dataset
    is not up to date, since loading one takes seconds.
    """
    hf = require_hf_model(config)
    prepare = config.prepare
    selection = Selection.from_config(prepare)
    dataset_dir = prepare.dataset_dir
    fingerprint = _fingerprint(config, hf, selection, sources)
    existing = _up_to_date(dataset_dir, fingerprint)
    if existing is not None:
        return PrepareOutcome(
            skipped=True,
            meta=existing,
            message=(
                f"dataset up to date: {dataset_dir} (skipped; delete it or change inputs "
                "or [prepare] settings to prepare again)"
            ),
        )

    tokenizer = load_tokenizer()
    report = ReadReport()
    total_bytes = sum(_stat(path)[0] for path in sources)
    # A stale meta.json must not outlive the files it described should this run stop.
    (dataset_dir / META_FILE).unlink(missing_ok=True)
    with tqdm(
        total=total_bytes,
        desc="reading speeches",
        unit="B",
        unit_scale=True,
        disable=None if show_progress else True,
    ) as bar:
        speeches = select(read_speeches(sources, report, advance=bar.update), selection, report)
        if prepare.max_records is not None:
            speeches = itertools.islice(speeches, prepare.max_records)
        split = _write_split(
            speeches,
            dataset_dir,
            structure_tokens=prepare.add_structure_tokens,
            train_split=prepare.train_split,
            seed=prepare.seed,
            describe=report.summary,
        )
    structure = STRUCTURE_TOKENS if prepare.add_structure_tokens else ()
    added = _add_structure_tokens(tokenizer, structure)
    with atomic.atomic_directory(dataset_dir / TOKENIZER_DIR) as staging:
        tokenizer.save_pretrained(str(staging))
    meta = DatasetMeta(
        base_model=hf.model_name,
        revision=hf.revision,
        structure_tokens=structure,
        added_tokens=added,
        vocab_size=len(tokenizer),
        doc_separator=prepare.doc_separator,
        records=split.records,
        characters=split.characters,
        file_sizes={name: (dataset_dir / name).stat().st_size for name in (TRAIN_FILE, VAL_FILE)},
        fingerprint=fingerprint,
        report=report.to_json(),
    )
    atomic.write_json(dataset_dir / META_FILE, meta.to_json())
    examples = "".join(f"\n  e.g. {line}" for line in report.rows.examples[:SHOWN_EXAMPLES])
    tokens_note = f" (+{len(added)} tokens: {' '.join(added)})" if added else ""
    return PrepareOutcome(
        skipped=False,
        meta=meta,
        message=(
            f"prepared {dataset_dir}: {split.records['train']:,} train + "
            f"{split.records['val']:,} val speeches for {hf.model_name}{tokens_note}; "
            f"{report.summary()}{examples}"
        ),
    )


def require_hf_model(config: ExperimentConfig) -> HFModelConfig:
    if config.train.hf_model is None:
        raise ConfigError(
            "this preparer builds a fine-tuning dataset and needs [train.hf_model] "
            "model_name (a hub id or a local folder) for the tokenizer"
        )
    return config.train.hf_model


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    records: Mapping[str, int]
    characters: Mapping[str, int]


class _SplitWriter:
    """Appends records to one split's file; can hand its last record back."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.records = 0
        self.characters = 0
        self._last: tuple[int, bytes, int] | None = None  # offset, line, characters

    def write(self, line: bytes, characters: int) -> None:
        self._last = (self.handle.tell(), line, characters)
        self.handle.write(line)
        self.records += 1
        self.characters += characters

    def take_last(self) -> tuple[bytes, int]:
        assert self._last is not None and self.records > 1
        offset, line, characters = self._last
        self.handle.seek(offset)
        self.handle.truncate()
        self._last = None
        self.records -= 1
        self.characters -= characters
        return line, characters


def _write_split(
    speeches: Iterator[Speech],
    dataset_dir: Path,
    *,
    structure_tokens: bool,
    train_split: float,
    seed: int,
    describe: Callable[[], str],
) -> _Split:
    rng = random.Random(seed)
    with (
        atomic.atomic_open(dataset_dir / TRAIN_FILE) as train_handle,
        atomic.atomic_open(dataset_dir / VAL_FILE) as val_handle,
    ):
        train, val = _SplitWriter(train_handle), _SplitWriter(val_handle)
        for speech in speeches:
            text = format_record(speech, structure_tokens=structure_tokens)
            line = json.dumps(_record(speech, text), ensure_ascii=False) + "\n"
            writer = train if rng.random() < train_split else val
            writer.write(line.encode("utf-8"), len(text))
        total = train.records + val.records
        if total < 2:
            raise DataError(
                f"{total} speech(es) to prepare, at least 2 are needed (one for val): "
                f"{describe()}; add speeches or loosen the [prepare] filters"
            )
        # Small corpora can leave a split empty; the last speech of the other one moves.
        for empty, full in ((val, train), (train, val)):
            if empty.records == 0:
                empty.write(*full.take_last())
    return _Split(
        records={"train": train.records, "val": val.records},
        characters={"train": train.characters, "val": val.characters},
    )


def _record(speech: Speech, text: str) -> dict[str, object]:
    fields: dict[str, object] = {
        "text": text,
        "speaker": speech.speaker,
        "party": speech.party,
        "topic": speech.topic,
        "date": speech.date.isoformat() if speech.date else None,
        "year": speech.known_year,
        "period": speech.period,
        "origin": speech.origin,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _add_structure_tokens(tokenizer: HFTokenizer, tokens: Sequence[str]) -> tuple[str, ...]:
    """Register `tokens` as special tokens; returns those that were new to the vocabulary."""
    if not tokens:
        return ()
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    return tuple(token for token, token_id in zip(tokens, ids, strict=True) if token_id >= before)


# --- idempotence --------------------------------------------------------------------------


def _fingerprint(
    config: ExperimentConfig,
    hf: HFModelConfig,
    selection: Selection,
    sources: Sequence[Path],
) -> dict[str, Any]:
    """Inputs and settings that decide the output, as JSON (compared after a round trip)."""
    prepare = config.prepare
    inputs = [*sources, *auxiliary_files(sources)]
    fingerprint = {
        "inputs": [
            {"path": str(path), "size": size, "mtime_ns": mtime}
            for path in inputs
            for size, mtime in [_stat(path)]
        ],
        "settings": {
            "format_version": FORMAT_VERSION,
            "base_model": hf.model_name,
            "revision": hf.revision,
            "add_structure_tokens": prepare.add_structure_tokens,
            "doc_separator": prepare.doc_separator,
            "train_split": prepare.train_split,
            "seed": prepare.seed,
            "max_records": prepare.max_records,
            "selection": selection.to_json(),
        },
    }
    roundtrip: dict[str, Any] = json.loads(json.dumps(fingerprint))
    return roundtrip


def _up_to_date(dataset_dir: Path, fingerprint: Mapping[str, Any]) -> DatasetMeta | None:
    if not (dataset_dir / META_FILE).is_file():
        return None
    try:
        meta = read_dataset_meta(dataset_dir)
    except DataError:
        return None  # a damaged meta.json is rebuilt by preparing again
    if dict(meta.fingerprint) != dict(fingerprint):
        return None
    if not (dataset_dir / TOKENIZER_DIR).is_dir():
        return None
    for name, size in meta.file_sizes.items():
        path = dataset_dir / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return meta


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"source not found: {path}; fix the path") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return stat.st_size, stat.st_mtime_ns


# --- meta.json validation -----------------------------------------------------------------

_T = typing.TypeVar("_T")


def _mapping(obj: object, source: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _meta_error(source, f"expected a JSON object, got {type(obj).__name__}")
    return typing.cast(Mapping[str, Any], obj)


def _typed(fields: Mapping[str, Any], key: str, kind: type[_T], source: Path) -> _T:
    value = fields.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _meta_error(source, f"'{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _strings(fields: Mapping[str, Any], key: str, source: Path) -> list[str]:
    value = fields.get(key)
    if not isinstance(value, list):
        raise _meta_error(source, f"'{key}' must be a list of strings")
    items = typing.cast(list[object], value)
    if not all(isinstance(item, str) for item in items):
        raise _meta_error(source, f"'{key}' must be a list of strings")
    return typing.cast(list[str], items)


def _counts(fields: Mapping[str, Any], key: str, source: Path) -> dict[str, int]:
    value = _mapping(fields.get(key), source)
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in value.values()):
        raise _meta_error(source, f"'{key}' must map names to counts")
    return {name: int(count) for name, count in value.items()}


def _meta_error(source: Path, problem: str) -> DataError:
    return DataError(f"invalid dataset metadata {source}: {problem}; {RERUN_HINT}")
