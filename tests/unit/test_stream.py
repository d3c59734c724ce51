"""The text stream: pieces that add up to the full decode, from short windows of ids.

Real tokenizers: tiktoken's byte-level r50k_base (emoji and umlauts span several ids),
the char tokenizer, and a tiny Hugging Face byte-level BPE with special tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import pytest

from ml_playground.data.tokenizer import CharTokenizer, TiktokenTokenizer
from ml_playground.sample.stream import REPLACEMENT_CHAR, TextStream
from tests.finetune_helpers import build_tokenizer

TEXTS = (
    "Grüße aus Köln! Die Straße ist nass, öde und übel.",
    "Party 🎉🎉 👍🏽 and a family 👨‍👩‍👧 — naïve café, 日本語のテキスト.",
    "Ä",
)
Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]


def streamed(decode: Decode, ids: Sequence[int], prompt_length: int, hidden: str = "") -> list[str]:
    """Every piece the stream hands out, the prompt's text first."""
    stream = TextStream(decode, ids[:prompt_length], hidden=hidden)
    pieces = [stream.prompt_text]
    pieces += [stream.push(token) for token in ids[prompt_length:]]
    pieces.append(stream.flush())
    return pieces


def tiktoken_codec() -> tuple[Encode, Decode]:
    tokenizer = TiktokenTokenizer("gpt2")
    return tokenizer.encode, tokenizer.decode


def hf_codec() -> tuple[Encode, Decode]:
    tokenizer, _ = build_tokenizer("gemma3")  # prepends <bos>, a special token

    def encode(text: str) -> list[int]:
        ids: list[int] = tokenizer.encode(text)  # pyright: ignore[reportUnknownMemberType] - untyped library
        return ids

    def decode(ids: Sequence[int]) -> str:
        return cast(str, tokenizer.decode(list(ids), skip_special_tokens=True))  # pyright: ignore[reportUnknownMemberType] - untyped library

    return encode, decode


def char_codec() -> tuple[Encode, Decode]:
    tokenizer = CharTokenizer.from_text("".join(TEXTS))
    return tokenizer.encode, tokenizer.decode


CODECS = {"tiktoken": tiktoken_codec, "hf": hf_codec, "char": char_codec}


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("prompt_length", [1, 3])
def test_streamed_pieces_add_up_to_the_full_decode(
    codec: str, text: str, prompt_length: int
) -> None:
    encode, decode = CODECS[codec]()
    ids = encode(text)

    pieces = streamed(decode, ids, min(prompt_length, len(ids)))

    assert "".join(pieces) == decode(ids) == text
    # Half a character is held back, never shown as a replacement character.
    assert not any(REPLACEMENT_CHAR in piece for piece in pieces)


def test_a_multi_byte_character_split_over_ids_appears_once_it_is_whole() -> None:
    encode, decode = tiktoken_codec()
    ids = encode("a🎉")
    assert len(ids) > 2  # the emoji's four bytes span several ids

    pieces = streamed(decode, ids, prompt_length=1)

    assert pieces[0] == "a"
    assert pieces[1:-1] == [""] * (len(ids) - 2) + ["🎉"]


def test_each_new_id_decodes_a_short_window_not_the_whole_text() -> None:
    encode, decode = tiktoken_codec()
    ids = encode(" ".join(TEXTS) * 20)
    windows: list[int] = []

    def counting(window: Sequence[int]) -> str:
        windows.append(len(window))
        return decode(window)

    stream = TextStream(counting, ids[:1])
    text = stream.prompt_text + "".join(stream.push(token) for token in ids[1:])

    assert text == decode(ids)
    assert max(windows[1:]) < 16  # bounded by the ids of one character, not by the text


def test_the_hidden_record_opening_is_left_out() -> None:
    encode, decode = tiktoken_codec()
    opening = "<SPEECH_START>\n"
    ids = encode(opening + TEXTS[0])

    pieces = streamed(decode, ids, prompt_length=len(encode(opening + "Grüße")), hidden=opening)

    assert "".join(pieces) == TEXTS[0]


def test_bytes_that_never_complete_a_character_are_flushed_at_the_end() -> None:
    encode, decode = tiktoken_codec()
    broken = encode("x🎉")[:-1]  # the emoji's last byte never comes

    pieces = streamed(decode, broken, prompt_length=1)

    assert "".join(pieces) == decode(broken)
    assert pieces[-1].endswith(REPLACEMENT_CHAR)
