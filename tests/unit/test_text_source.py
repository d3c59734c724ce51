"""Which files `[prepare] source = "text"` reads (data/sources.py:text_sources), first match
wins: raw_text_path, raw_dir, dataset_dir/input.txt, download_url, fallback_text."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_playground.config import PrepareConfig
from ml_playground.data.sources import TINY_SHAKESPEARE, text_sources
from ml_playground.errors import DataError


def settings(tmp_path: Path, **keys: object) -> PrepareConfig:
    return PrepareConfig.model_validate({"dataset_dir": tmp_path / "datasets", **keys})


def test_a_bundled_corpus_named_by_fallback_text_is_read_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = text_sources(settings(tmp_path, fallback_text="tiny_shakespeare"))

    assert sources == [TINY_SHAKESPEARE]
    assert "using the bundled Tiny Shakespeare" in capsys.readouterr().out
    assert not (tmp_path / "datasets" / "input.txt").exists()


def test_a_sample_file_named_by_fallback_text_is_seeded_into_input_txt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("Präsidentin: Das Wort hat ...\n", encoding="utf-8")

    sources = text_sources(settings(tmp_path, fallback_text=str(sample)))

    seeded = tmp_path / "datasets" / "input.txt"
    assert sources == [seeded]
    assert seeded.read_bytes() == sample.read_bytes()
    assert "seeded the bundled sample sample.txt" in capsys.readouterr().out


def test_a_placed_input_txt_wins_over_the_fallback(tmp_path: Path) -> None:
    placed = tmp_path / "datasets" / "input.txt"
    placed.parent.mkdir()
    placed.write_text("my own text\n", encoding="utf-8")

    assert text_sources(settings(tmp_path, fallback_text="tiny_shakespeare")) == [placed]
    assert placed.read_text(encoding="utf-8") == "my own text\n", "never overwritten"


def test_raw_text_path_wins_over_the_fallback(tmp_path: Path) -> None:
    own = tmp_path / "own.txt"
    own.write_text("mine\n", encoding="utf-8")

    prepare = settings(tmp_path, raw_text_path=own, fallback_text="tiny_shakespeare")

    assert text_sources(prepare) == [own]


def test_a_fallback_that_is_neither_a_file_nor_a_bundled_corpus_names_key_value_and_choices(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "nope.txt")

    with pytest.raises(DataError) as caught:
        text_sources(settings(tmp_path, fallback_text=missing))

    message = str(caught.value)
    assert f"prepare.fallback_text = {missing!r}" in message
    assert "'tiny_shakespeare'" in message
    assert not (tmp_path / "datasets" / "input.txt").exists()


def test_without_any_text_the_error_says_where_to_place_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no text to prepare: mkdir -p "):
        text_sources(settings(tmp_path))
