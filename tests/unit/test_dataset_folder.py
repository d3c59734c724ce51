"""The prepared-folder rules both datasets follow: meta.json last, the up-to-date check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from ml_playground.data import dataset_folder
from ml_playground.data.dataset_folder import META_FILE, PreparedMeta
from ml_playground.errors import DataError


class NotesMeta(PreparedMeta):
    """Notes metadata."""

    source: str
    notes_bytes: int

    def file_sizes_expected(self) -> Mapping[str, int]:
        return {"notes.txt": self.notes_bytes}


def prepared(folder: Path, text: str = "hello", source: str = "a") -> NotesMeta:
    dataset_folder.remove_meta(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(text, encoding="utf-8")
    meta = NotesMeta(source=source, notes_bytes=len(text.encode()))
    dataset_folder.write_meta(folder, meta)
    return meta


def up_to_date(folder: Path, source: str = "a") -> NotesMeta | None:
    outcome = dataset_folder.up_to_date(NotesMeta, folder, lambda meta: meta.source == source)
    return outcome.meta if outcome is not None else None


def test_a_folder_with_the_same_inputs_and_intact_files_is_up_to_date(tmp_path: Path) -> None:
    meta = prepared(tmp_path)

    outcome = dataset_folder.up_to_date(NotesMeta, tmp_path, lambda saved: saved.source == "a")

    assert outcome is not None
    assert outcome.skipped
    assert outcome.meta == meta
    assert outcome.message.startswith(f"dataset up to date: {tmp_path} (skipped;")


def test_other_inputs_a_resized_file_or_a_damaged_meta_json_mean_prepare_again(
    tmp_path: Path,
) -> None:
    prepared(tmp_path)
    other_inputs = up_to_date(tmp_path, source="b")
    (tmp_path / "notes.txt").write_text("hello, world", encoding="utf-8")
    resized = up_to_date(tmp_path)
    prepared(tmp_path)
    (tmp_path / META_FILE).write_text('{"source": "a"}', encoding="utf-8")
    damaged = up_to_date(tmp_path)

    assert (other_inputs, resized, damaged) == (None, None, None)


def test_removing_the_meta_json_first_leaves_a_folder_that_reads_as_not_prepared(
    tmp_path: Path,
) -> None:
    prepared(tmp_path)

    dataset_folder.remove_meta(tmp_path)

    assert up_to_date(tmp_path) is None
    with pytest.raises(DataError, match=rf"not found: {tmp_path / META_FILE}; run `ml-playground"):
        dataset_folder.read_meta(NotesMeta, tmp_path / META_FILE)
