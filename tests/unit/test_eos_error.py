"""A tokenizer without an end-of-sequence token: one error line, the same wherever records close."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest

from ml_playground.data.rendering import eos_id, prompt_completion_record, text_record
from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import DataError
from tests.finetune_helpers import build_tokenizer

WHAT_TO_DO = "use a base model whose tokenizer has one"


def tokenizer_without_eos() -> HFTokenizer:
    tokenizer, _ = build_tokenizer("qwen2")
    tokenizer.eos_token = None
    return cast(HFTokenizer, tokenizer)


def test_every_record_kind_refuses_a_tokenizer_without_eos_in_one_line() -> None:
    tokenizer = tokenizer_without_eos()

    renders: list[Callable[[], object]] = [
        lambda: text_record(tokenizer, "Guten Tag."),
        lambda: prompt_completion_record(tokenizer, "Frage:", " Antwort."),
    ]
    for render in renders:
        with pytest.raises(DataError) as raised:
            render()
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith("the base model's tokenizer has no end-of-sequence token")
        assert message.endswith(WHAT_TO_DO)
    # The records writer knows the folder it saved the tokenizer in, and names it.
    with pytest.raises(DataError, match=r"^the tokenizer in data/tokenizer has no end-of-seq"):
        eos_id(tokenizer, "the tokenizer in data/tokenizer")


def test_a_tokenizer_with_eos_closes_records_with_it() -> None:
    built, special = build_tokenizer("qwen2")
    tokenizer = cast(HFTokenizer, built)

    assert eos_id(tokenizer) == special.eos
    assert text_record(tokenizer, "Guten Tag.").input_ids[-1] == special.eos
