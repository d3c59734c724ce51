"""The records dataset: speeches in, training records and the tokenizer out.

    dataset_dir/train.jsonl, val.jsonl   one JSON object per speech: "text" (header,
                                         blank line, speech; see speeches/speech.py) and
                                         the known fields (speaker, party, date, period,
                                         origin)
    dataset_dir/tokenizer/               the base model's tokenizer, with the structure
                                         tokens added when add_structure_tokens is on
    dataset_dir/meta.json                written last: base model, added tokens, record
                                         shape (how a record opens and closes, which
                                         tokens stop generation), counts, what happened
                                         to every input row, and the fingerprint of
                                         inputs and settings

The folder follows dataset_folder.py: when meta.json records the same inputs (by path,
size and modification time, `InputFile`) and settings and both jsonl files have the sizes
it recorded, nothing is done. The tokenizer is the caller's to load (`TokenizerLoader`),
so this layer never imports the Hugging Face backend. The split is by speech and seeded
(record_split.py).
"""

from __future__ import annotations

import itertools
import json
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field

from ml_playground.artifacts import Artifact
from ml_playground.config import ExperimentConfig, HFModelConfig, RecordsSourceFormat
from ml_playground.data import dataset_folder
from ml_playground.data.dataset_folder import (
    RERUN_HINT,
    TOKENIZER_DIR,
    InputFile,
    PreparedMeta,
    input_file,
)
from ml_playground.data.record_split import TRAIN_FILE, VAL_FILE, Line, per_split, write_split
from ml_playground.data.speeches.selection import Selection, SelectionSettings
from ml_playground.data.speeches.source import (
    ReadReport,
    ReadTally,
    auxiliary_files,
    read_speeches,
    select,
    speech_sources,
)
from ml_playground.data.speeches.speech import (
    RECORD_OPENING,
    SPEECH_END,
    STRUCTURE_TOKENS,
    Speech,
    format_record,
)
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import ConfigError, DataError
from ml_playground.progress import byte_progress

FORMAT_VERSION: Final = 1
RECORD_FORMAT: Final = "speech-records-jsonl"
SHOWN_EXAMPLES = 3

# The caller, which may import the Hugging Face backend, decides how a tokenizer is had.
TokenizerLoader = Callable[[], HFTokenizer]


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


class RecordSettings(Artifact):
    """The settings that decide a records dataset."""

    format_version: int
    base_model: str
    revision: str | None
    add_structure_tokens: bool
    doc_separator: str
    train_split: float
    seed: int
    max_records: int | None
    selection: SelectionSettings


class Fingerprint(Artifact):
    """Inputs and settings of a records dataset; another fingerprint means prepare again."""

    inputs: tuple[InputFile, ...]
    settings: RecordSettings


class HFRecordsMeta(RecordFormat, PreparedMeta):
    """What every records dataset for a Hugging Face model holds, speeches or chats: the
    base model and its tokenizer folder, records per split, the split files' sizes."""

    base_model: str
    revision: str | None
    tokenizer: Literal["tokenizer"] = TOKENIZER_DIR
    vocab_size: int
    records: dict[str, int]
    file_sizes: dict[str, int]

    def file_sizes_expected(self) -> Mapping[str, int]:
        return self.file_sizes


class SpeechDatasetMeta(HFRecordsMeta):
    """Speech records dataset metadata."""

    format_version: Literal[1] = FORMAT_VERSION
    format: Literal["speech-records-jsonl"] = RECORD_FORMAT
    characters: dict[str, int]
    fingerprint: Fingerprint
    rows: ReadTally


def read_dataset_meta(dataset_dir: Path) -> SpeechDatasetMeta:
    """The meta.json of a prepared dataset; missing or damaged ones say how to rebuild."""
    return dataset_folder.read_meta(SpeechDatasetMeta, dataset_dir / dataset_folder.META_FILE)


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


PrepareOutcome = dataset_folder.PrepareOutcome[SpeechDatasetMeta]


def prepare_speeches(
    config: ExperimentConfig,
    suffixes: frozenset[str],
    load_tokenizer: TokenizerLoader,
    *,
    force: bool = False,
) -> PrepareOutcome:
    """What an experiment's preparer does: find the sources, prepare (again even when up to
    date, with `force`), say what happened."""
    outcome = prepare_speech_dataset(
        config, speech_sources(config.prepare, suffixes), load_tokenizer, force=force
    )
    print(outcome.message)
    return outcome


def prepare_speech_dataset(
    config: ExperimentConfig,
    sources: Sequence[Path],
    load_tokenizer: TokenizerLoader,
    *,
    show_progress: bool = True,
    force: bool = False,
) -> PrepareOutcome:
    """Read, select, format and split the speeches in `sources` into prepare.dataset_dir.

    `load_tokenizer` gives the base model's tokenizer; it is called only when the dataset
    is not up to date, since loading one takes seconds.
    """
    hf = require_hf_model(config)
    prepare, speeches_config = config.prepare, config.prepare.speeches
    selection = Selection.from_config(speeches_config)
    dataset_dir = prepare.dataset_dir
    fingerprint = _fingerprint(config, hf, selection, sources)
    existing = dataset_folder.up_to_date(
        SpeechDatasetMeta,
        dataset_dir,
        lambda meta: meta.fingerprint == fingerprint and (dataset_dir / TOKENIZER_DIR).is_dir(),
        force=force,
    )
    if existing is not None:
        return existing

    tokenizer = load_tokenizer()
    report = ReadReport()
    total_bytes = sum(entry.size for entry in fingerprint.inputs[: len(sources)])
    with (
        byte_progress("reading speeches", total_bytes, enabled=show_progress) as advance,
        dataset_folder.replacing(dataset_dir) as staged,
    ):
        speeches = select(read_speeches(sources, report, advance=advance), selection, report)
        if speeches_config.max_records is not None:
            speeches = itertools.islice(speeches, speeches_config.max_records)
        split = write_split(
            _lines(speeches, structure_tokens=speeches_config.add_structure_tokens),
            staged,
            train_split=prepare.train_split,
            seed=prepare.seed,
            too_few=lambda total: DataError(
                f"{total} speech(es) to prepare, at least 2 are needed (one for val): "
                f"{report.summary()}; add speeches or loosen the [prepare] filters"
            ),
        )
        structure = STRUCTURE_TOKENS if speeches_config.add_structure_tokens else ()
        added = _add_structure_tokens(tokenizer, structure)
        framing = speech_record_format(
            structure_tokens=speeches_config.add_structure_tokens,
            added_tokens=added,
            doc_separator=speeches_config.doc_separator,
        )
        with staged.folder(TOKENIZER_DIR) as folder:
            tokenizer.save_pretrained(str(folder))
        meta = SpeechDatasetMeta(
            **framing.record_format(),
            base_model=hf.model_name,
            revision=hf.revision,
            vocab_size=len(tokenizer),
            records=per_split(split, "records"),
            characters=per_split(split, "characters"),
            file_sizes=staged.sizes(TRAIN_FILE, VAL_FILE),
            fingerprint=fingerprint,
            rows=report.tally(),
        )
        staged.commit(meta)
    examples = "".join(f"\n  e.g. {line}" for line in report.rows.examples[:SHOWN_EXAMPLES])
    tokens_note = f" (+{len(added)} tokens: {' '.join(added)})" if added else ""
    return PrepareOutcome(
        skipped=False,
        meta=meta,
        message=(
            f"prepared {dataset_dir}: {split['train']['records']:,} train + "
            f"{split['val']['records']:,} val speeches for {hf.model_name}{tokens_note}; "
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


def _lines(speeches: Iterator[Speech], *, structure_tokens: bool) -> Iterator[Line]:
    for speech in speeches:
        text = format_record(speech, structure_tokens=structure_tokens)
        line = json.dumps(_record(speech, text), ensure_ascii=False) + "\n"
        yield line.encode("utf-8"), {"characters": len(text)}


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
) -> Fingerprint:
    """Inputs and settings that decide the output."""
    prepare, speeches = config.prepare, config.prepare.speeches
    inputs = [*sources, *auxiliary_files(sources)]
    return Fingerprint(
        inputs=tuple(input_file(path) for path in inputs),
        settings=RecordSettings(
            format_version=FORMAT_VERSION,
            base_model=hf.model_name,
            revision=hf.revision,
            add_structure_tokens=speeches.add_structure_tokens,
            doc_separator=speeches.doc_separator,
            train_split=prepare.train_split,
            seed=prepare.seed,
            max_records=speeches.max_records,
            selection=selection.settings(),
        ),
    )
