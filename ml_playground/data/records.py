"""The speech records dataset: speeches in, training-ready token files and the tokenizer out.

Every speech becomes one record, "text" (header, blank line, speech; see
speeches/speech.py) tokenized the way the model expects a text to begin (with <bos> where
the tokenizer adds one) and closed by the end-of-sequence token and the doc_separator: the
model sees every speech end, learns to emit EOS there, and sampling stops at it. The
folder (train.bin, val.bin, tokenizer/ with the structure tokens added when
add_structure_tokens is on, meta.json) is dataset_meta.py's; `write_records` writes it,
for chat records too.

The folder follows dataset_folder.py: when meta.json records the same inputs (by path,
size and modification time, `InputFile`) and settings and both token files have the sizes
it recorded, nothing is done. The tokenizer is the caller's to load (`TokenizerLoader`),
so this layer never imports the Hugging Face backend. The split is by speech and seeded
(record_split.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

from ml_playground.artifacts import Artifact
from ml_playground.config import ExperimentConfig, HFModelConfig
from ml_playground.data import dataset_folder
from ml_playground.data.dataset_folder import TOKENIZER_DIR, StagedDataset, input_file
from ml_playground.data.dataset_meta import (
    DatasetMeta,
    Fingerprint,
    HFTokenizerFolder,
    RecordFormat,
    token_dtype,
)
from ml_playground.data.record_split import SplitCounts, SplitRecord, per_split, write_split
from ml_playground.data.rendering import eos_id
from ml_playground.data.speeches.selection import Selection, SelectionSettings
from ml_playground.data.speeches.source import (
    ReadReport,
    auxiliary_files,
    read_speeches,
    select,
    speech_sources,
)
from ml_playground.data.speeches.speech import (
    RECORD_OPENING,
    SPEECH_END,
    STRUCTURE_TOKENS,
    format_record,
)
from ml_playground.data.table import RowTally
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import ConfigError, DataError
from ml_playground.progress import byte_progress

FORMAT_VERSION: Final = 3
SHOWN_EXAMPLES = 3
ENCODE_BATCH = 256

# The caller, which may import the Hugging Face backend, decides how a tokenizer is had.
TokenizerLoader = Callable[[], HFTokenizer]


class RecordSettings(Artifact):
    """The settings that decide a speech records dataset."""

    format_version: int
    base_model: str
    revision: str | None
    add_structure_tokens: bool
    doc_separator: str
    train_split: float
    seed: int
    max_records: int | None
    selection: SelectionSettings


PrepareOutcome = dataset_folder.PrepareOutcome[DatasetMeta]


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
    existing = records_up_to_date(dataset_dir, fingerprint, force=force)
    if existing is not None:
        return existing

    tokenizer = load_tokenizer()
    structure = STRUCTURE_TOKENS if speeches_config.add_structure_tokens else ()
    added = _add_structure_tokens(tokenizer, structure)
    closing = _closing_run(tokenizer, speeches_config.doc_separator, dataset_dir)
    report = ReadReport()
    total_bytes = sum(entry.size for entry in fingerprint.inputs[: len(sources)])
    with (
        byte_progress("reading speeches", total_bytes, enabled=show_progress) as advance,
        dataset_folder.replacing(dataset_dir) as staged,
    ):
        speeches = select(read_speeches(sources, report, advance=advance), selection, report)
        if speeches_config.max_records is not None:
            speeches = itertools.islice(speeches, speeches_config.max_records)
        texts = (
            format_record(speech, structure_tokens=speeches_config.add_structure_tokens)
            for speech in speeches
        )
        meta, split = write_records(
            staged,
            _records(texts, tokenizer, closing),
            tokenizer,
            config,
            too_few=lambda total: DataError(
                f"{total} speech(es) to prepare, at least 2 are needed (one for val): "
                f"{report.summary()}; add speeches or loosen the [prepare] filters"
            ),
            fingerprint=fingerprint,
            record_format=speech_record_format(
                structure_tokens=speeches_config.add_structure_tokens,
                added_tokens=added,
                doc_separator=speeches_config.doc_separator,
            ),
            tally=report.tally,
            masked=False,
        )
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


def speech_record_format(
    *, structure_tokens: bool, added_tokens: tuple[str, ...] = (), doc_separator: str = "\n\n"
) -> RecordFormat:
    """Speech records: wrapped in <SPEECH_START> ... <SPEECH_END> with structure tokens (the
    end token stops a generation); otherwise a header and text that only EOS ends."""
    return RecordFormat(
        structure_tokens=STRUCTURE_TOKENS if structure_tokens else (),
        added_tokens=added_tokens,
        doc_separator=doc_separator,
        record_opening=RECORD_OPENING if structure_tokens else "",
        record_closing=SPEECH_END if structure_tokens else "",
        stop_tokens=(SPEECH_END,) if structure_tokens else (),
    )


def require_hf_model(config: ExperimentConfig) -> HFModelConfig:
    if config.train.hf_model is None:
        raise ConfigError(
            "this preparer builds a fine-tuning dataset and needs [train.hf_model] "
            "model_name (a hub id or a local folder) for the tokenizer"
        )
    return config.train.hf_model


# --- writing ------------------------------------------------------------------------------


def records_up_to_date(
    dataset_dir: Path, fingerprint: Fingerprint, *, force: bool
) -> PrepareOutcome | None:
    """The skipped outcome of a records dataset made from the same inputs and settings."""
    return dataset_folder.up_to_date(
        DatasetMeta,
        dataset_dir,
        lambda meta: meta.fingerprint == fingerprint and (dataset_dir / TOKENIZER_DIR).is_dir(),
        force=force,
    )


def write_records(
    staged: StagedDataset,
    records: Iterable[SplitRecord],
    tokenizer: HFTokenizer,
    config: ExperimentConfig,
    *,
    too_few: Callable[[int], DataError],
    fingerprint: Fingerprint,
    record_format: RecordFormat,
    tally: Callable[[], RowTally],
    masked: bool,
) -> tuple[DatasetMeta, SplitCounts]:
    """Split `records` into the token files, save the tokenizer beside them and commit the
    meta; `tally` says what happened to the source rows once the records are read. Masked
    records measure their target tokens, the others their characters."""
    hf = require_hf_model(config)
    split = write_split(
        records,
        staged,
        dtype=token_dtype(len(tokenizer)),
        masked=masked,
        train_split=config.prepare.train_split,
        seed=config.prepare.seed,
        too_few=too_few,
    )
    with staged.folder(TOKENIZER_DIR) as folder:
        tokenizer.save_pretrained(str(folder))
    meta = DatasetMeta(
        tokenizer=HFTokenizerFolder(base_model=hf.model_name, revision=hf.revision),
        vocab_size=len(tokenizer),
        dtype=token_dtype(len(tokenizer)),
        tokens=per_split(split, "tokens"),
        masked=masked,
        fingerprint=fingerprint,
        record_format=record_format,
        records=per_split(split, "records"),
        characters=None if masked else per_split(split, "characters"),
        trained_tokens=per_split(split, "trained") if masked else None,
        rows=tally(),
    )
    staged.commit(meta)
    return meta, split


def _closing_run(tokenizer: HFTokenizer, separator: str, dataset_dir: Path) -> list[int]:
    """EOS and the separator's ids: what follows every record."""
    eos = eos_id(tokenizer, f"the tokenizer in {dataset_dir / TOKENIZER_DIR}")
    return [eos, *(tokenizer.encode(separator, add_special_tokens=False) if separator else [])]


def _records(
    texts: Iterator[str], tokenizer: HFTokenizer, closing: Sequence[int]
) -> Iterator[SplitRecord]:
    """Each text as a record begins (tokenized in batches, which is faster), then `closing`."""
    for batch in _batches(texts, ENCODE_BATCH):
        encoded = tokenizer(batch, add_special_tokens=True)["input_ids"]
        for text, ids in zip(batch, encoded, strict=True):
            # Some tokenizers (Llama's with add_eos_token) already close a text with EOS.
            body = ids[:-1] if ids and ids[-1] == closing[0] else ids
            yield SplitRecord([*body, *closing], measures={"characters": len(text)})


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
        ).to_json(),
    )
