"""`inspect`'s windows are the batcher's own, marked as documented, and its checks fire."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from ml_playground import dataset_checks, inspect_sources, inspect_windows, inspection
from ml_playground.data.batches import IGNORE_INDEX, BatchSampler
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.inspect_windows import (
    RESET,
    TARGET_CLOSE,
    TARGET_COLOUR,
    TARGET_OPEN,
    Window,
    render_window,
)
from ml_playground.inspection import Dataset, Record, Split
from tests.experiments import char_gpt, prepare


def rows_of(tensor: torch.Tensor) -> list[list[int]]:
    return cast(list[list[int]], tensor.tolist())  # pyright: ignore[reportUnknownMemberType] - torch types tolist as list[Unknown]


def decode_bytes(ids: Sequence[int]) -> str:
    return "".join(chr(i) for i in ids)


def encode_ascii(text: str) -> list[int]:
    """Ids of a byte "vocabulary" whose id 0 stands for every character past ASCII."""
    return [ord(c) if ord(c) < 128 else 0 for c in text]


def no_hf_tokenizer(folder: Path) -> ChatTokenizer:
    raise AssertionError(f"a corpus needs no Hugging Face tokenizer ({folder})")


@pytest.mark.parametrize("sampler", ["random", "sequential"])
def test_the_windows_shown_are_the_first_ones_the_runs_batcher_draws(
    tmp_path: Path, sampler: str
) -> None:
    loaded = char_gpt(tmp_path, {"train.data.sampler": sampler}, corpus_chars=5000)
    prepare(loaded)
    config = loaded.config
    data = config.train.data

    with inspection.opened(config, no_hf_tokenizer) as dataset:
        windows = inspect_windows.draw_windows(dataset, config, 10)  # more than one batch of 8

    batcher = BatchSampler(
        data.dataset_dir / data.train_bin,
        dataset.dtype,
        config.train.block_size,
        data.batch_size,
        mode=data.sampler,
        seed=config.train.runtime.seed,
    )
    first, second = batcher.next_batch(), batcher.next_batch()
    x = torch.cat([first[0], second[0]])[:10]
    y = torch.cat([first[1], second[1]])[:10]
    assert [list(w.ids[:-1]) for w in windows] == rows_of(x)
    assert [list(w.ids[1:]) for w in windows] == rows_of(y)
    assert all(w.targets == (False, *[True] * config.train.block_size) for w in windows)


def test_masked_windows_mark_exactly_the_targets_the_batcher_keeps(tmp_path: Path) -> None:
    config = char_gpt(tmp_path).config
    generator = np.random.default_rng(0)
    tokens = generator.integers(0, 256, 400).astype(np.uint16)
    mask = generator.integers(0, 2, 400).astype(np.uint8)
    tokens.tofile(tmp_path / "train.bin")
    mask.tofile(tmp_path / "train.mask.bin")
    dataset = masked_dataset(
        tokens.tolist(),
        mask.tolist(),
        [],
        train_file=tmp_path / "train.bin",
        train_mask=tmp_path / "train.mask.bin",
    )

    windows = inspect_windows.draw_windows(dataset, config, 8)

    batcher = BatchSampler(
        tmp_path / "train.bin",
        "uint16",
        config.train.block_size,
        config.train.data.batch_size,
        seed=config.train.runtime.seed,
        mask=tmp_path / "train.mask.bin",
    )
    x, y = batcher.next_batch()
    assert [list(w.ids[:-1]) for w in windows] == rows_of(x)
    shown = [
        [
            token if target else IGNORE_INDEX
            for token, target in zip(w.ids[1:], w.targets[1:], strict=True)
        ]
        for w in windows
    ]
    assert shown == rows_of(y)


def test_targets_are_coloured_on_a_terminal_and_bracketed_elsewhere() -> None:
    window = Window(1, 0, (72, 105, 33, 10), (False, True, True, False), None)

    assert render_window(window, decode_bytes, colour=False) == f"H{TARGET_OPEN}i!{TARGET_CLOSE}\n"
    assert render_window(window, decode_bytes, colour=True) == f"H{TARGET_COLOUR}i!{RESET}\n"


def masked_dataset(
    tokens: list[int], mask: list[int], records: list[Record], **kwargs: object
) -> Dataset:
    """A records dataset over a byte "vocabulary": id i decodes to chr(i)."""
    split = Split("train", np.asarray(tokens), np.asarray(mask, dtype=np.uint8), tuple(records))
    fields: dict[str, object] = {
        "folder": Path("datasets"),
        "kind": "chat records (test)",
        "source": "chats.jsonl",
        "source_format": "messages",
        "tokenizer": "bytes",
        "vocab_size": 256,
        "dtype": "uint16",
        "train_file": Path("train.bin"),
        "train_mask": None,
        "splits": (split,),
        "decode": decode_bytes,
        "encode": encode_ascii,
        "closing_ids": frozenset({3}),
        "unknown_id": None,
        "chat_tokenizer": None,
        "renderings": (),
        "source_texts": {},
    }
    return Dataset(**(fields | kwargs))  # type: ignore[arg-type]


def test_an_end_of_turn_token_outside_the_mask_is_one_warning_for_all_records() -> None:
    # Two records "u a a <3>", the answer trains but its closing token 3 does not.
    tokens = [117, 97, 97, 3] * 2
    mask = [0, 1, 1, 0] * 2
    records = [Record(0, 4, "train.bin#1", "chats.jsonl:1"), Record(4, 4, "train.bin#2")]

    warnings = dataset_checks.run_checks(masked_dataset(tokens, mask, records))

    assert len(warnings) == 1
    assert "not a target in 2 of 2 records (first: train.bin#1 (from chats.jsonl:1))" in warnings[0]


def test_a_trained_end_of_turn_token_passes_and_a_record_without_targets_warns() -> None:
    tokens = [117, 97, 3, 117, 117, 3]
    mask = [0, 1, 1, 0, 0, 0]
    records = [Record(0, 3, "train.bin#1"), Record(3, 3, "train.bin#2")]

    warnings = dataset_checks.run_checks(masked_dataset(tokens, mask, records))

    assert warnings == [
        "warning: 1 of 2 records have no target at all (first: train.bin#2): they fill "
        "windows and teach nothing; check the chat template's assistant turn (or the "
        "completion field) and prepare again"
    ]


def test_characters_mapped_to_the_unknown_id_are_named_with_their_record() -> None:
    tokens = [104, 0, 3]
    records = [Record(0, 3, "train.bin#1", "chats.jsonl:7")]
    dataset = masked_dataset(
        tokens, [1, 1, 1], records, unknown_id=0, source_texts={"chats.jsonl:7": "hé"}
    )

    warnings = dataset_checks.run_checks(dataset)

    assert len(warnings) == 1
    assert "1 token(s) in 1 record(s) are the unknown id 0" in warnings[0]
    assert "('é')" in warnings[0]
    assert "(first: train.bin#1 (from chats.jsonl:7))" in warnings[0]


def test_two_conversations_rendered_alike_are_one_warning_naming_both() -> None:
    same = "<user>Frage?<assistant>Antwort."
    renderings = (
        inspect_sources.Rendering("chats.jsonl:1", '[{"role": "system", "content": "A"}]', same),
        inspect_sources.Rendering("chats.jsonl:2", '[{"role": "system", "content": "B"}]', same),
        inspect_sources.Rendering("chats.jsonl:3", '[{"role": "system", "content": "B"}]', same),
    )
    dataset = masked_dataset([104, 3], [1, 1], [], renderings=renderings)

    warnings = dataset_checks.run_checks(dataset)

    assert len(warnings) == 1
    assert "1 time(s) (first: chats.jsonl:1 and chats.jsonl:2)" in warnings[0]
