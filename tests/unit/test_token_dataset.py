"""Streaming prepare: exact token files, split rules, chunk boundaries, skip and rebuild."""

from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from ml_playground.data.corpus import DEFAULT_CHUNK_BYTES, prepare_token_dataset
from ml_playground.data.dataset_folder import META_FILE
from ml_playground.data.dataset_meta import FORMAT_VERSION, DatasetMeta, read_meta
from ml_playground.data.record_split import token_file
from ml_playground.data.tokenizer import (
    Tokenizer,
    TokenizerKind,
    TokenizerSpec,
    tokenizer_from_spec,
)
from ml_playground.data.writer import PrepareOutcome
from ml_playground.errors import DataError
from tests.conftest import SHARED_DIR

TRAIN_BIN, VAL_BIN = token_file("train"), token_file("val")
SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"
KINDS: list[TokenizerKind] = ["char", "tiktoken"]


@pytest.fixture
def shakespeare(tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "input.txt"
    path.parent.mkdir()
    shutil.copyfile(SHAKESPEARE, path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def prepare(
    sources: list[Path],
    dataset_dir: Path,
    kind: TokenizerKind = "char",
    *,
    encoding: str = "gpt2",
    train_split: float = 0.9,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    vocab_size_limit: int | None = None,
) -> PrepareOutcome:
    return prepare_token_dataset(
        sources,
        dataset_dir,
        tokenizer_kind=kind,
        encoding=encoding,
        train_split=train_split,
        chunk_bytes=chunk_bytes,
        show_progress=False,
        vocab_size_limit=vocab_size_limit,
    )


def split_ids(dataset_dir: Path, meta: DatasetMeta) -> tuple[list[int], list[int]]:
    train = np.fromfile(dataset_dir / TRAIN_BIN, dtype=meta.dtype)
    val = np.fromfile(dataset_dir / VAL_BIN, dtype=meta.dtype)
    return [int(i) for i in train], [int(i) for i in val]


def tokenizer_of(meta: DatasetMeta) -> Tokenizer:
    assert meta.tokenizer_spec is not None, "a text corpus has a char or tiktoken tokenizer"
    return tokenizer_from_spec(meta.tokenizer_spec)


def decoded_corpus(dataset_dir: Path, meta: DatasetMeta) -> str:
    train, val = split_ids(dataset_dir, meta)
    return tokenizer_of(meta).decode(train + val)


def test_char_prepare_writes_uint16_bins_that_decode_back_to_the_corpus(
    shakespeare: Path, tmp_path: Path
) -> None:
    text = shakespeare.read_text(encoding="utf-8")
    dataset_dir = tmp_path / "dataset"

    outcome = prepare([shakespeare], dataset_dir, "char", chunk_bytes=64 * 1024)

    meta = outcome.meta
    assert not outcome.skipped
    assert meta.dtype == "uint16"
    assert meta.vocab_size == 65
    assert meta.tokens["train"] + meta.tokens["val"] == len(text)
    assert (dataset_dir / TRAIN_BIN).stat().st_size == 2 * meta.tokens["train"]
    assert decoded_corpus(dataset_dir, meta) == text
    assert read_meta(dataset_dir / META_FILE) == meta


def test_train_split_is_the_first_fraction_of_the_characters(
    shakespeare: Path, tmp_path: Path
) -> None:
    text = shakespeare.read_text(encoding="utf-8")

    meta = prepare([shakespeare], tmp_path / "dataset", "char", train_split=0.75).meta

    assert meta.tokens["train"] == int(len(text) * 0.75)
    train, _ = split_ids(tmp_path / "dataset", meta)
    assert tokenizer_of(meta).decode(train) == text[: int(len(text) * 0.75)]


def test_tiktoken_prepare_matches_encoding_each_split_whole(
    shakespeare: Path, tmp_path: Path
) -> None:
    text = shakespeare.read_text(encoding="utf-8")
    dataset_dir = tmp_path / "dataset"
    r50k = tiktoken.get_encoding("r50k_base")

    # Small chunks force many cuts; each must leave the ids exactly as whole-text encoding.
    meta = prepare([shakespeare], dataset_dir, "tiktoken", chunk_bytes=16 * 1024).meta

    cut = int(len(text) * 0.9)
    train, val = split_ids(dataset_dir, meta)
    assert train == r50k.encode_ordinary(text[:cut])
    assert val == r50k.encode_ordinary(text[cut:])
    assert meta.dtype == "uint16"
    assert meta.vocab_size == 50257
    assert meta.tokenizer == TokenizerSpec(kind="tiktoken", encoding="gpt2")
    assert decoded_corpus(dataset_dir, meta) == text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("character", ["ä", "🍎"])
def test_multibyte_character_cut_by_a_chunk_boundary_survives(
    kind: TokenizerKind, character: str, tmp_path: Path
) -> None:
    # The character starts one byte before the 1024-byte chunk boundary.
    filler = "Zeile mit Text.\n" * 64  # 1024 ASCII bytes
    text = filler[:1023] + character + "ß und Grüße 👩‍💻\n" + filler * 3
    assert text.encode("utf-8")[1023:1024] == character.encode("utf-8")[:1]
    source = write(tmp_path / "input.txt", text)

    meta = prepare([source], tmp_path / "dataset", kind, chunk_bytes=1024).meta

    assert decoded_corpus(tmp_path / "dataset", meta) == text


@pytest.mark.parametrize("kind", KINDS)
def test_sources_join_with_a_newline_only_where_one_is_missing(
    kind: TokenizerKind, tmp_path: Path
) -> None:
    first = write(tmp_path / "a.txt", "erste Zeile")
    second = write(tmp_path / "b.txt", "zweite Zeile\n")
    empty = write(tmp_path / "c.txt", "")
    third = write(tmp_path / "d.txt", "dritte Zeile")

    meta = prepare([first, second, empty, third], tmp_path / "dataset", kind).meta

    corpus = "erste Zeile\nzweite Zeile\ndritte Zeile"
    assert decoded_corpus(tmp_path / "dataset", meta) == corpus
    assert meta.fingerprint.content_sha256 == hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    assert meta.source_inputs() == [str(path) for path in (first, second, empty, third)]


def test_meta_json_records_tokenizer_counts_hash_and_settings(
    shakespeare: Path, tmp_path: Path
) -> None:
    prepare([shakespeare], tmp_path / "dataset", "tiktoken", train_split=0.8)

    saved = json.loads((tmp_path / "dataset" / META_FILE).read_text(encoding="utf-8"))

    assert saved["format_version"] == FORMAT_VERSION
    assert saved["tokenizer"] == {"kind": "tiktoken", "encoding": "gpt2", "vocab": None}
    assert saved["dtype"] == "uint16"
    fingerprint = saved["fingerprint"]
    assert fingerprint["settings"] == {"kind": "tiktoken", "encoding": "gpt2", "train_split": 0.8}
    assert fingerprint["content_sha256"] == hashlib.sha256(shakespeare.read_bytes()).hexdigest()
    assert [entry["path"] for entry in fingerprint["inputs"]] == [str(shakespeare)]
    assert saved["masked"] is False
    assert saved["tokens"]["train"] > 0
    assert saved["tokens"]["val"] > 0


def test_rerun_with_the_same_inputs_is_skipped(shakespeare: Path, tmp_path: Path) -> None:
    dataset_dir = tmp_path / "dataset"
    first = prepare([shakespeare], dataset_dir, "char")
    train_written = (dataset_dir / TRAIN_BIN).stat().st_mtime_ns

    again = prepare([shakespeare], dataset_dir, "char")

    assert again.skipped
    assert again.meta == first.meta
    assert again.message.startswith(f"dataset up to date: {dataset_dir} (skipped;")
    assert (dataset_dir / TRAIN_BIN).stat().st_mtime_ns == train_written


def test_force_prepares_an_up_to_date_dataset_again(shakespeare: Path, tmp_path: Path) -> None:
    dataset_dir = tmp_path / "dataset"
    first = prepare([shakespeare], dataset_dir, "char")

    again = prepare_token_dataset(
        [shakespeare], dataset_dir, tokenizer_kind="char", show_progress=False, force=True
    )

    assert not again.skipped
    assert again.meta == first.meta
    assert again.message.startswith(f"prepared {dataset_dir}:")


def test_changed_input_text_prepares_again(tmp_path: Path) -> None:
    source = write(tmp_path / "input.txt", "Hallo Welt!\n" * 50)
    dataset_dir = tmp_path / "dataset"
    first = prepare([source], dataset_dir, "char")

    write(source, "Hallo Welt, wie geht es?\n" * 50)
    again = prepare([source], dataset_dir, "char")

    assert not again.skipped
    assert again.meta.fingerprint.content_sha256 != first.meta.fingerprint.content_sha256
    assert decoded_corpus(dataset_dir, again.meta) == "Hallo Welt, wie geht es?\n" * 50


Settings = tuple[TokenizerKind, str, float]  # kind, encoding, train_split


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (("char", "gpt2", 0.9), ("char", "gpt2", 0.8)),
        (("char", "gpt2", 0.9), ("tiktoken", "gpt2", 0.9)),
        (("tiktoken", "gpt2", 0.9), ("tiktoken", "r50k_base", 0.9)),
    ],
    ids=["train_split", "tokenizer", "encoding"],
)
def test_changed_settings_prepare_again(before: Settings, after: Settings, tmp_path: Path) -> None:
    source = write(tmp_path / "input.txt", "Hallo Welt!\n" * 50)
    dataset_dir = tmp_path / "dataset"
    kind, encoding, train_split = before
    prepare([source], dataset_dir, kind, encoding=encoding, train_split=train_split)

    kind, encoding, train_split = after
    again = prepare([source], dataset_dir, kind, encoding=encoding, train_split=train_split)

    assert not again.skipped
    assert read_meta(dataset_dir / META_FILE) == again.meta


def test_char_prepare_ignores_the_tiktoken_encoding_setting(tmp_path: Path) -> None:
    source = write(tmp_path / "input.txt", "Hallo Welt!\n" * 50)
    prepare([source], tmp_path / "dataset", "char", encoding="gpt2")

    again = prepare([source], tmp_path / "dataset", "char", encoding="cl100k_base")

    assert again.skipped


def test_damaged_token_file_prepares_again(shakespeare: Path, tmp_path: Path) -> None:
    dataset_dir = tmp_path / "dataset"
    prepare([shakespeare], dataset_dir, "char")
    with (dataset_dir / VAL_BIN).open("r+b") as handle:
        handle.truncate(10)

    again = prepare([shakespeare], dataset_dir, "char")

    assert not again.skipped
    assert (dataset_dir / VAL_BIN).stat().st_size == 2 * again.meta.tokens["val"]


def test_output_folder_holds_only_the_three_artifacts(shakespeare: Path, tmp_path: Path) -> None:
    prepare([shakespeare], tmp_path / "dataset", "char")

    assert sorted(path.name for path in (tmp_path / "dataset").iterdir()) == [
        META_FILE,
        TRAIN_BIN,
        VAL_BIN,
    ]


@pytest.mark.parametrize(("text", "train_split"), [("", 0.5), ("x", 0.5), ("abcd", 0.1)])
def test_corpus_too_small_for_two_non_empty_splits_is_an_error(
    text: str, train_split: float, tmp_path: Path
) -> None:
    source = write(tmp_path / "input.txt", text)

    with pytest.raises(DataError, match="corpus too small to split"):
        prepare([source], tmp_path / "dataset", "char", train_split=train_split)

    assert not (tmp_path / "dataset" / META_FILE).exists()


def test_vocab_size_limit_below_the_tokenizer_names_both_numbers(tmp_path: Path) -> None:
    source = write(tmp_path / "input.txt", "Hallo Welt!\n" * 50)

    with pytest.raises(
        DataError,
        match=r"train\.model\.vocab_size = 1000 is smaller than"
        r" the tokenizer's vocabulary \(50257\)",
    ):
        prepare([source], tmp_path / "dataset", "tiktoken", vocab_size_limit=1000)


def test_vocab_size_limit_is_checked_for_an_up_to_date_dataset_too(tmp_path: Path) -> None:
    source = write(tmp_path / "input.txt", "abcdefgh\n" * 20)
    prepare([source], tmp_path / "dataset", "char")

    with pytest.raises(DataError, match=r"vocab_size = 4 is smaller .* \(9\)"):
        prepare([source], tmp_path / "dataset", "char", vocab_size_limit=4)


def test_invalid_utf8_names_the_file_and_byte_offset(tmp_path: Path) -> None:
    source = tmp_path / "latin1.txt"
    source.write_bytes(b"ok\n" * 600 + "Grüße\n".encode("latin-1"))

    with pytest.raises(DataError, match=rf"{source} is not valid UTF-8 at byte 1802"):
        prepare([source], tmp_path / "dataset", "char", chunk_bytes=1024)


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"source text not found: {tmp_path / 'nope.txt'}"):
        prepare([tmp_path / "nope.txt"], tmp_path / "dataset", "char")


def test_read_meta_of_a_missing_file_says_to_run_prepare(tmp_path: Path) -> None:
    path = tmp_path / "dataset" / META_FILE

    with pytest.raises(DataError, match=rf"{path}.*run `ml-playground prepare <experiment>`"):
        read_meta(path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"format_version": 3}',
        '{"format_version": 3, "dtype": "uint16", "tokens": {"train": 1, "val": 1}, "masked":'
        ' false, "vocab_size": 2, "fingerprint": {"inputs": [], "settings": {}},'
        ' "tokenizer": {"kind": "char", "vocab": "ab"}}',
    ],
    ids=["syntax", "not-an-object", "fields-missing", "bad-tokenizer"],
)
def test_read_meta_of_a_damaged_file_names_it_and_says_to_run_prepare(
    content: str, tmp_path: Path
) -> None:
    path = tmp_path / META_FILE
    path.write_text(content, encoding="utf-8")

    with pytest.raises(DataError, match=rf"{path}.*run `ml-playground prepare <experiment>`"):
        read_meta(path)


@pytest.mark.parametrize("version", [1, 2, 99])
def test_read_meta_of_another_format_version_names_the_folder_and_says_to_force(
    version: int, tmp_path: Path
) -> None:
    path = tmp_path / "dataset" / META_FILE
    path.parent.mkdir()
    path.write_text(json.dumps({"format_version": version}), encoding="utf-8")

    with pytest.raises(DataError) as raised:
        read_meta(path)

    message = str(raised.value)
    assert f"{path.parent} was prepared by an older version" in message
    assert f"format_version {version}" in message
    assert "run `ml-playground prepare <experiment> --force`" in message


def test_peak_memory_stays_far_below_the_corpus_size(shakespeare: Path, tmp_path: Path) -> None:
    sources = [shakespeare, shakespeare, shakespeare]  # 3.3 MB of text
    tracemalloc.start()
    try:
        prepare(sources, tmp_path / "dataset", "char", chunk_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Holding the corpus would take 3.3 MB, holding its ids as Python ints ~27 MB; the
    # streaming prepare needs about 1.5 MB at this chunk size.
    assert peak < 2_500_000
