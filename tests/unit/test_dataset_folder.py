"""The prepared-folder rules every dataset follows: new files staged and swapped in only
when complete, meta.json last, the up-to-date check."""

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
    with dataset_folder.replacing(folder) as staged:
        with staged.open("notes.txt") as handle:
            handle.write(text.encode())
        meta = NotesMeta(source=source, notes_bytes=staged.sizes("notes.txt")["notes.txt"])
        staged.commit(meta)
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


def test_a_prepare_that_fails_before_its_commit_leaves_the_old_dataset_byte_for_byte(
    tmp_path: Path,
) -> None:
    prepared(tmp_path, "old notes")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    with pytest.raises(DataError, match="bad record"), dataset_folder.replacing(tmp_path) as staged:
        with staged.open("notes.txt") as handle:
            handle.write(b"new notes, half")
        with staged.folder("tokenizer") as folder:
            (folder / "vocab.json").write_text("{}", encoding="utf-8")
        raise DataError("bad record")

    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert up_to_date(tmp_path) is not None


def test_a_committed_dataset_replaces_files_and_folders_and_leaves_nothing_staged(
    tmp_path: Path,
) -> None:
    prepared(tmp_path, "old")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "old.json").write_text("old", encoding="utf-8")

    with dataset_folder.replacing(tmp_path) as staged:
        with staged.open("notes.txt") as handle:
            handle.write(b"new!")
        with staged.folder("tokenizer") as folder:
            (folder / "new.json").write_text("new", encoding="utf-8")
        staged.commit(NotesMeta(source="b", notes_bytes=4))

    assert sorted(path.name for path in tmp_path.iterdir()) == [META_FILE, "notes.txt", "tokenizer"]
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "new!"
    assert [path.name for path in (tmp_path / "tokenizer").iterdir()] == ["new.json"]
    assert up_to_date(tmp_path, source="b") is not None


def test_a_folder_without_a_meta_json_reads_as_not_prepared(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")

    assert up_to_date(tmp_path) is None
    with pytest.raises(DataError, match=rf"not found: {tmp_path / META_FILE}; run `ml-playground"):
        dataset_folder.read_meta(NotesMeta, tmp_path / META_FILE)
