"""Speeches as a source of the one dataset writer (../writer.py).

Every speech becomes one record: its text (speech.py) tokenized as a record begins
(rendering.opening), then EOS and the doc_separator, so the model learns to emit EOS where
a speech ends and sampling stops there. Every token is a target, so there are no masks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

from ml_playground.config import ExperimentConfig, SpeechesConfig
from ml_playground.data.dataset_folder import TOKENIZER_DIR, StagedDataset, input_file
from ml_playground.data.dataset_meta import Fingerprint, RecordFormat, TokenDType
from ml_playground.data.record_split import SplitCounts, SplitRecord, write_split
from ml_playground.data.rendering import eos_id, opening
from ml_playground.data.speeches.members import member_tables
from ml_playground.data.speeches.selection import Selection
from ml_playground.data.speeches.source import ReadReport, read_speeches
from ml_playground.data.speeches.speech import (
    RECORD_OPENING,
    SPEECH_END,
    STRUCTURE_TOKENS,
    format_record,
)
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.data.writer import (
    DatasetPlan,
    PrepareOutcome,
    RecordSettings,
    SourceReport,
    TokenizerLoader,
    hf_tokenizer_folder,
    write_dataset,
)
from ml_playground.errors import DataError
from ml_playground.progress import byte_progress

ENCODE_BATCH = 256


class SpeechSettings(RecordSettings):
    """The settings that decide a speech dataset: those of every records dataset, and
    [prepare.speeches]."""

    speeches: SpeechesConfig


def prepare_speech_dataset(
    config: ExperimentConfig,
    sources: Sequence[Path],
    load_tokenizer: TokenizerLoader,
    *,
    show_progress: bool = True,
    force: bool = False,
) -> PrepareOutcome:
    """Read, select, format and split the speeches in `sources` (speech_sources: the files
    [prepare] names) into prepare.dataset_dir, through write_dataset (which says when
    `load_tokenizer`, the base model's tokenizer, is called, and what `force` does)."""
    prepare, speeches = config.prepare, config.prepare.speeches
    selection = Selection(speeches)
    fingerprint = Fingerprint(
        inputs=tuple(input_file(path) for path in [*sources, *member_tables(sources)]),
        settings=SpeechSettings(**SpeechSettings.shared(config), speeches=speeches).to_json(),
    )
    report = ReadReport()

    def plan() -> DatasetPlan:
        tokenizer = load_tokenizer()
        added = _add_structure_tokens(tokenizer) if speeches.add_structure_tokens else ()
        eos = eos_id(tokenizer, f"the tokenizer in {prepare.dataset_dir / TOKENIZER_DIR}")
        separator = speeches.doc_separator
        closing = [
            eos,
            *(tokenizer.encode(separator, add_special_tokens=False) if separator else []),
        ]
        total_bytes = sum(entry.size for entry in fingerprint.inputs[: len(sources)])

        def write_splits(staged: StagedDataset, dtype: TokenDType) -> SplitCounts:
            with byte_progress("reading speeches", total_bytes, enabled=show_progress) as advance:
                kept = selection.select(read_speeches(sources, report, advance=advance), report)
                texts = (
                    format_record(speech, structure_tokens=speeches.add_structure_tokens)
                    for speech in kept
                )
                return write_split(
                    _records(texts, tokenizer, closing),
                    staged,
                    dtype=dtype,
                    masked=False,
                    train_split=prepare.train_split,
                    seed=prepare.seed,
                    too_few=lambda total: DataError(
                        f"{total} speech(es) to prepare, at least 2 are needed (one for val): "
                        f"{report.summary()}; add speeches or loosen the [prepare] filters"
                    ),
                )

        def summary(_: SplitCounts) -> SourceReport:
            tokens_note = f"+{len(added)} tokens: {' '.join(added)}; " if added else ""
            return SourceReport(
                report.tally(), f"{tokens_note}{report.summary()}{report.shown_examples()}"
            )

        return DatasetPlan(
            tokenizer=hf_tokenizer_folder(config),
            vocab_size=len(tokenizer),
            write_splits=write_splits,
            unit="speeches",
            hf_tokenizer=tokenizer,
            record_format=speech_record_format(
                structure_tokens=speeches.add_structure_tokens,
                added_tokens=added,
                doc_separator=separator,
            ),
            report=summary,
        )

    return write_dataset(prepare.dataset_dir, fingerprint, plan, force=force)


def speech_record_format(
    *, structure_tokens: bool, added_tokens: tuple[str, ...] = (), doc_separator: str = "\n\n"
) -> RecordFormat:
    """The framing of speech.py's records, as meta.json keeps it; with structure tokens,
    <SPEECH_END> stops a generation too, else only EOS does."""
    return RecordFormat(
        structure_tokens=STRUCTURE_TOKENS if structure_tokens else (),
        added_tokens=added_tokens,
        doc_separator=doc_separator,
        record_opening=RECORD_OPENING if structure_tokens else "",
        record_closing=SPEECH_END if structure_tokens else "",
        stop_tokens=(SPEECH_END,) if structure_tokens else (),
    )


def _records(
    texts: Iterator[str], tokenizer: HFTokenizer, closing: Sequence[int]
) -> Iterator[SplitRecord]:
    """Each text as a record begins (tokenized in batches, which is faster), then `closing`."""
    while batch := list(itertools.islice(texts, ENCODE_BATCH)):
        encoded = tokenizer(batch, add_special_tokens=True)["input_ids"]
        for text, ids in zip(batch, encoded, strict=True):
            yield SplitRecord(
                [*opening(ids, closing[0]), *closing], measures={"characters": len(text)}
            )


def _add_structure_tokens(tokenizer: HFTokenizer) -> tuple[str, ...]:
    """Register the structure tokens as special tokens; returns those new to the vocabulary."""
    before = len(tokenizer)
    tokens: list[str] = list(STRUCTURE_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return tuple(token for token, token_id in zip(tokens, ids, strict=True) if token_id >= before)
