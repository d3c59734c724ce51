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
from pathlib import Path
from typing import Any, NamedTuple

from ml_playground.errors import DataError

# What `save_to_disk` leaves in a folder: one of these tells it from a folder of data files.
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class DatasetRows(NamedTuple):
    """One split of a dataset: where it came from, its content hash, and its rows."""

    label: str  # "name[split]", shown in counts and messages
    fingerprint: str  # datasets' hash of the content; it changes when the data does
    rows: Iterator[tuple[str, object]]  # with where each is: label#row, 1-based


def load_split(name: str, subset: str | None, split: str) -> DatasetRows:
    """The split of the dataset `name`; every way it can fail is one DataError line."""
    # Imported here: pyarrow and pandas take seconds. `datasets` is only partly typed, so it
    # is used through Any and the one value that leaves this function is checked below.
    datasets: Any = importlib.import_module("datasets")

    label = f"{name}[{split}]" if subset is None else f"{name}/{subset}[{split}]"
    folder = Path(name)
    try:
        if folder.is_dir() and any((folder / marker).is_file() for marker in SAVED_MARKERS):
            dataset: Any = datasets.load_from_disk(str(folder))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(
                        f"[prepare] hf_dataset {name} has no split {split!r}; set "
                        f"hf_dataset_split to one of {', '.join(sorted(dataset))}"
                    )
                dataset = dataset[split]
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
    rows = typing.cast(typing.Iterable[Mapping[str, object]], dataset)
    return DatasetRows(
        label=label,
        fingerprint=str(getattr(dataset, "_fingerprint", "")),
        rows=((f"{label}#{number}", row) for number, row in enumerate(rows, start=1)),
    )
