"""Records from a Hugging Face `datasets` dataset: `[prepare] hf_dataset`.

    [prepare] hf_dataset          a folder written by `Dataset.save_to_disk`, a folder of
                                  data files (JSON Lines, Parquet, CSV, ...) that
                                  `load_dataset` reads, or a dataset name already in the
                                  user's datasets cache
    [prepare] hf_dataset_subset   the configuration ("name" in `load_dataset`), if any
    [prepare] hf_dataset_split    which split to read (default "train")

The rows are the JSON objects a records_path line holds (chat_records.py lists the
shapes), rendered and counted exactly as lines of a .jsonl file are. Nothing here
downloads on its own account: with HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1 set,
`datasets` reads only its cache, which is how a machine without internet uses a dataset
downloaded earlier.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_playground.errors import DataError

# What `save_to_disk` leaves in a folder: one of these tells it from a folder of data files.
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class DatasetRows:
    """One split of a dataset: where it came from, its content hash, and its rows."""

    label: str  # "name[split]", shown in counts and messages
    fingerprint: str  # datasets' hash of the content; it changes when the data does
    rows: typing.Iterable[Mapping[str, object]]

    def located(self) -> Iterator[tuple[str, object]]:
        """Each row with where it is, as `label#row` (1-based, like line numbers)."""
        for number, row in enumerate(self.rows, start=1):
            yield f"{self.label}#{number}", row


def load_split(name: str, subset: str | None, split: str) -> DatasetRows:
    """The split of the dataset `name`; every way it can fail is one DataError line."""
    # Imported here: pyarrow and pandas take seconds. `datasets` is only partly typed, so it
    # is used through Any and the one value that leaves this function is checked below.
    datasets: Any = importlib.import_module("datasets")

    label = f"{name}[{split}]" if subset is None else f"{name}/{subset}[{split}]"
    folder = Path(name)
    try:
        if folder.is_dir() and any((folder / marker).is_file() for marker in SAVED_MARKERS):
            loaded: Any = datasets.load_from_disk(str(folder))
            dataset = (
                loaded if isinstance(loaded, datasets.Dataset) else _pick_split(loaded, split, name)
            )
        else:
            dataset = datasets.load_dataset(name, subset, split=split)
    except (datasets.exceptions.DatasetsError, OSError, ValueError, ConnectionError) as error:
        exc = typing.cast(Exception, error)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"cannot load [prepare] hf_dataset {label}: {reason[:300]}; it must be a local "
            "folder or a dataset in your datasets cache (this machine may be offline)"
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"[prepare] hf_dataset {label} is a streaming or unsplit dataset; "
            "name a split with [prepare] hf_dataset_split"
        )
    return DatasetRows(
        label=label,
        fingerprint=str(getattr(dataset, "_fingerprint", "")),
        rows=typing.cast(typing.Iterable[Mapping[str, object]], dataset),
    )


def _pick_split(splits: Mapping[str, Any], split: str, name: str) -> Any:
    if split not in splits:
        raise DataError(
            f"[prepare] hf_dataset {name} has no split {split!r}; set hf_dataset_split to one "
            f"of {', '.join(sorted(splits))}"
        )
    return splits[split]
