"""GPT-2's BPE as GGUF stores it: the printable byte alphabet, and merges rebuilt from ranks.

The merges are checked by handing them to the `tokenizers` library's own BPE (the engine
behind transformers' fast tokenizers) and comparing what it makes of real text with
tiktoken, which works from ranks alone.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ml_playground.export.bpe_vocab import (
    CONTROL,
    NORMAL,
    ByteLevelVocab,
    build_vocab,
    byte_alphabet,
    gpt2_vocab,
    merges_from_ranks,
)
from tests.export_helpers import EOT, R50K, gpt2_encoding, tiny_bpe_encoding

TEXTS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
    "It's 2024 -- naïve café, ünïcödé, 東京, 😀!  Two  spaces\tand a tab.\r\n",
    "   leading spaces and trailing ones   ",
)


def tokenizers_bpe(vocab: ByteLevelVocab) -> Tokenizer:
    """A `tokenizers` byte-level BPE built only from what GGUF stores."""
    ids = {token: index for index, token in enumerate(vocab.tokens)}
    merges = [(left, right) for left, right in (merge.split(" ") for merge in vocab.merges)]
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_byte_alphabet_maps_every_byte_to_a_distinct_printable_character() -> None:
    alphabet = byte_alphabet()

    assert sorted(alphabet) == list(range(256))
    assert len(set(alphabet.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in alphabet.values())
    assert alphabet[ord("A")] == "A"
    assert alphabet[ord(" ")] == "Ġ"  # GPT-2's well-known spelling of a space
    assert alphabet[ord("\n")] == "Ċ"


@pytest.fixture(scope="module")
def gpt2() -> ByteLevelVocab:
    return gpt2_vocab(R50K, gpt2_encoding())


def test_gpt2_vocab_has_gpt2s_50000_merges_in_order(gpt2: ByteLevelVocab) -> None:
    vocab = gpt2

    assert len(vocab.tokens) == 50257
    assert len(vocab.merges) == 50000  # GPT-2's merges.txt has exactly these many
    assert vocab.merges[:5] == ["Ġ t", "Ġ a", "h e", "i n", "r e"]
    assert vocab.eos_id == 50256
    assert vocab.eos_token == EOT
    assert vocab.token_types[50256] == CONTROL
    assert vocab.token_types.count(NORMAL) == 50256
    assert vocab.pre == "gpt-2"


def test_rebuilt_merges_tokenize_text_exactly_like_tiktoken(gpt2: ByteLevelVocab) -> None:
    encoding = gpt2_encoding()
    tokenizer = tokenizers_bpe(gpt2)

    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        assert ids == encoding.encode_ordinary(text), text
        assert tokenizer.decode(ids) == text


def test_a_cut_of_gpt2s_ranks_is_a_complete_bpe_of_its_own() -> None:
    encoding = tiny_bpe_encoding(400)
    ranks = {encoding.decode_single_token_bytes(rank): rank for rank in range(400)}
    vocab = build_vocab(ranks, {400: EOT}, eos_id=400)

    tokenizer = tokenizers_bpe(vocab)

    assert len(vocab.merges) == 400 - 256
    for text in TEXTS:
        assert tokenizer.encode(text).ids == encoding.encode_ordinary(text)


def test_a_token_that_no_merge_of_two_tokens_reaches_is_refused() -> None:
    # "abc" needs "ab" or "bc" first, and neither is a token.
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"abc": 3}

    with pytest.raises(ValueError, match="not the merge of two tokens"):
        merges_from_ranks(ranks)


def test_merges_follow_rank_order_not_token_order() -> None:
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}

    # "abc": BPE merges the lower-ranked pair "bc" first, so the last merge is a + bc.
    assert merges_from_ranks(ranks) == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")]
