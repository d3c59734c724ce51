"""The one dataset writer: what every source's records become, in one folder layout.

A source (a text corpus, speeches, JSONL records or a datasets split) hands the writer
the fingerprint of its inputs and settings and a `DatasetPlan`: the tokenizer, the split
rule that writes the token files (the corpus's character split, record_split.py's
per-record split), and how to report what it read. The writer skips a folder that is up
to date, and otherwise writes dataset_meta.py's layout through dataset_folder.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_playground.artifacts import Artifact
from ml_playground.config import ExperimentConfig, HFModelConfig
from ml_playground.data import dataset_folder
from ml_playground.data.dataset_folder import META_FILE, TOKENIZER_DIR, StagedDataset
from ml_playground.data.dataset_meta import (
    DatasetMeta,
    DatasetTokenizer,
    Fingerprint,
    HFTokenizerFolder,
    RecordFormat,
    TokenDType,
    read_meta,
    token_dtype,
)
from ml_playground.data.record_split import SPLITS, SplitCounts
from ml_playground.data.table import RowTally
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import ConfigError, DataError

# The caller, which may import the Hugging Face backend, decides how a tokenizer is had.
TokenizerLoader = Callable[[], HFTokenizer]
# Writes the staged train/val token files (and masks); returns what each split holds.
SplitRule = Callable[[StagedDataset, TokenDType], SplitCounts]


@dataclass(frozen=True)
class PrepareOutcome:
    """What preparing did: skipped an up-to-date folder, or wrote one; `message` says which."""

    skipped: bool
    meta: DatasetMeta
    message: str


@dataclass(frozen=True)
class SourceReport:
    """What a source read, once its records are written: the row tally meta.json keeps,
    and the words the outcome line ends with."""

    rows: RowTally | None = None
    summary: str = ""


@dataclass(frozen=True)
class DatasetPlan:
    """What a source hands the writer: `unit` names a split's entries in the outcome line
    ("tokens", "speeches", "messages records"); `hf_tokenizer` is saved as tokenizer/."""

    tokenizer: DatasetTokenizer
    vocab_size: int
    write_splits: SplitRule
    unit: str
    masked: bool = False
    hf_tokenizer: HFTokenizer | None = None
    record_format: RecordFormat | None = None
    report: Callable[[SplitCounts], SourceReport] = lambda _: SourceReport()


def write_dataset(
    dataset_dir: Path,
    fingerprint: Fingerprint,
    plan: Callable[[], DatasetPlan],
    *,
    force: bool = False,
) -> PrepareOutcome:
    """Write the source's dataset into `dataset_dir`, unless the folder already holds it
    (again anyway with `force`). `plan` is called only when writing: loading a tokenizer
    or scanning a vocabulary can take seconds."""
    existing = None if force else up_to_date(dataset_dir, fingerprint)
    if existing is not None:
        return existing
    chosen = plan()
    dtype = token_dtype(chosen.vocab_size)
    with dataset_folder.replacing(dataset_dir) as staged:
        counts = chosen.write_splits(staged, dtype)
        if chosen.hf_tokenizer is not None:
            with staged.folder(TOKENIZER_DIR) as folder:
                chosen.hf_tokenizer.save_pretrained(str(folder))
        report = chosen.report(counts)
        meta = DatasetMeta(
            tokenizer=chosen.tokenizer,
            vocab_size=chosen.vocab_size,
            dtype=dtype,
            tokens={split: counts[split]["tokens"] for split in SPLITS},
            masked=chosen.masked,
            fingerprint=fingerprint,
            record_format=chosen.record_format,
            records=_per_split(counts, "records"),
            characters=_per_split(counts, "characters"),
            trained_tokens=_per_split(counts, "trained"),
            rows=report.rows,
        )
        staged.commit(meta)
    counted = "records" if meta.records is not None else "tokens"
    return PrepareOutcome(
        skipped=False,
        meta=meta,
        message=(
            f"prepared {dataset_dir}: {counts['train'][counted]:,} train + "
            f"{counts['val'][counted]:,} val {chosen.unit} for {meta.tokenizer.describe()}, "
            f"{dtype}{'; ' if report.summary else ''}{report.summary}"
        ),
    )


def up_to_date(dataset_dir: Path, fingerprint: Fingerprint) -> PrepareOutcome | None:
    """The skipped outcome when dataset_dir's meta.json matches `fingerprint` and its files
    are intact; None when the folder must be prepared (again). A prepare that was killed
    is finished or undone first."""
    dataset_folder.recover(dataset_dir)
    try:
        meta = read_meta(dataset_dir / META_FILE)
    except DataError:
        return None  # a missing, damaged or older meta.json: the folder is prepared again
    if not (fingerprint.matches(meta.fingerprint) and meta.files_intact(dataset_dir)):
        return None
    return PrepareOutcome(
        skipped=True,
        meta=meta,
        message=(
            f"dataset up to date: {dataset_dir} (skipped; delete it or change inputs or "
            "[prepare] settings to prepare again)"
        ),
    )


def require_hf_model(config: ExperimentConfig) -> HFModelConfig:
    """The model whose tokenizer a fine-tuning dataset is written with."""
    if config.train.hf_model is None:
        raise ConfigError(
            "this preparer builds a fine-tuning dataset and needs [train.hf_model] "
            "model_name (a hub id or a local folder) for the tokenizer"
        )
    return config.train.hf_model


class RecordSettings(Artifact):
    """The settings that decide every records dataset: the model whose tokenizer writes it,
    and the per-record split. A source's settings extend these."""

    base_model: str
    revision: str | None
    train_split: float
    seed: int

    @classmethod
    def shared(cls, config: ExperimentConfig) -> dict[str, Any]:
        """These fields' values for `config`, to build a source's settings with."""
        hf = require_hf_model(config)
        return {
            "base_model": hf.model_name,
            "revision": hf.revision,
            "train_split": config.prepare.train_split,
            "seed": config.prepare.seed,
        }


def hf_tokenizer_folder(config: ExperimentConfig) -> HFTokenizerFolder:
    hf = require_hf_model(config)
    return HFTokenizerFolder(base_model=hf.model_name, revision=hf.revision)


def _per_split(counts: SplitCounts, key: str) -> dict[str, int] | None:
    """One measure of both splits ({"train": n, "val": m}); None if the rule does not count it."""
    if not any(key in counts[split] for split in SPLITS):
        return None
    return {split: counts[split].get(key, 0) for split in SPLITS}
