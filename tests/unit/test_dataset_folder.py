"""The prepared-folder rules every dataset follows: new files staged and swapped in only
when complete, meta.json last, the writer's up-to-date check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ml_playground.data import dataset_folder, writer
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import DatasetMeta, Fingerprint, read_meta
from ml_playground.data.tokenizer import TokenizerSpec
from ml_playground.errors import DataError

VOCAB = tuple("abcdefghijklmnopqrstuvwxyz ,!")
SPEC = TokenizerSpec(kind="char", vocab=VOCAB)


def fingerprint(source: str) -> Fingerprint:
    return Fingerprint(inputs=(), settings={"source": source})


def prepared(folder: Path, text: str = "hello", source: str = "a") -> DatasetMeta:
    """A char dataset whose train.bin holds `text`'s ids (one uint16 each), val.bin one id."""
    with dataset_folder.replacing(folder) as staged:
        for split, ids in (("train", [VOCAB.index(c) for c in text]), ("val", [0])):
            with staged.open(f"{split}.bin") as handle:
                handle.write(b"".join(i.to_bytes(2, "little") for i in ids))
        meta = DatasetMeta(
            tokenizer=SPEC,
            vocab_size=len(VOCAB),
            dtype="uint16",
            tokens={"train": len(text), "val": 1},
            masked=False,
            fingerprint=fingerprint(source),
        )
        staged.commit(meta)
    return meta


def up_to_date(folder: Path, source: str = "a") -> DatasetMeta | None:
    outcome = writer.up_to_date(folder, fingerprint(source))
    return outcome.meta if outcome is not None else None


def test_a_folder_with_the_same_inputs_and_intact_files_is_up_to_date(tmp_path: Path) -> None:
    meta = prepared(tmp_path)

    outcome = writer.up_to_date(tmp_path, fingerprint("a"))

    assert outcome is not None
    assert outcome.skipped
    assert outcome.meta == meta
    assert outcome.message.startswith(f"dataset up to date: {tmp_path} (skipped;")


def test_other_inputs_a_resized_file_or_a_damaged_meta_json_mean_prepare_again(
    tmp_path: Path,
) -> None:
    prepared(tmp_path)
    other_inputs = up_to_date(tmp_path, source="b")
    (tmp_path / "train.bin").write_bytes(b"\0" * 24)
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
        with staged.open("train.bin") as handle:
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

    new = prepared(tmp_path / "new", "new!", source="b")
    with dataset_folder.replacing(tmp_path) as staged:
        for split in ("train", "val"):
            with staged.open(f"{split}.bin") as handle:
                handle.write((tmp_path / "new" / f"{split}.bin").read_bytes())
        with staged.folder("tokenizer") as folder:
            (folder / "new.json").write_text("new", encoding="utf-8")
        staged.commit(new)
    shutil.rmtree(tmp_path / "new")

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        META_FILE,
        "tokenizer",
        "train.bin",
        "val.bin",
    ]
    assert (tmp_path / "train.bin").read_bytes() == (b"\x0d\x00\x04\x00\x16\x00\x1c\x00")
    assert [path.name for path in (tmp_path / "tokenizer").iterdir()] == ["new.json"]
    assert up_to_date(tmp_path, source="b") is not None


def test_a_folder_without_a_meta_json_reads_as_not_prepared(tmp_path: Path) -> None:
    (tmp_path / "train.bin").write_bytes(b"\0\0")

    assert up_to_date(tmp_path) is None
    with pytest.raises(DataError, match=rf"not found: {tmp_path / META_FILE}; run `ml-playground"):
        read_meta(tmp_path / META_FILE)
