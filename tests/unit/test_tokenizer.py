"""Char and tiktoken tokenizers: exact round trips, gpt2 offline from the bundled ranks,
specs as identities."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken

from ml_playground.artifacts import parse_artifact
from ml_playground.data import tokenizer as tokenizer_module
from ml_playground.data.tokenizer import (
    BUNDLED_RANKS,
    CharTokenizer,
    TiktokenTokenizer,
    TokenizerSpec,
    bundled_encoding,
    tokenizer_from_spec,
)
from ml_playground.errors import DataError
from tests.conftest import SHARED_DIR

REMEDY = "the file is damaged or from another version, so recreate it"
SHAKESPEARE = SHARED_DIR / "data" / "tinyshakespeare.txt"
GERMAN = (
    "Größere Übungen: Die Bürgerinnen aßen süße Äpfel am Fluss. 🍎🇩🇪\n"
    "»Straße«, sagte sie — und lächelte. 👩‍💻 ÄÖÜäöüß\r\n"
)


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


def test_char_tokenizer_round_trips_tinyshakespeare(shakespeare: str) -> None:
    tokenizer = CharTokenizer.from_text(shakespeare)

    assert tokenizer.vocab_size == 65
    assert tokenizer.decode(tokenizer.encode(shakespeare)) == shakespeare


def test_char_tokenizer_round_trips_german_with_umlauts_and_emoji() -> None:
    tokenizer = CharTokenizer.from_text(GERMAN)

    assert tokenizer.decode(tokenizer.encode(GERMAN)) == GERMAN
    assert tokenizer.eot_id is None


def test_char_vocabulary_is_sorted_so_ids_follow_code_points() -> None:
    tokenizer = CharTokenizer.from_text("cab")

    assert tokenizer.encode("abc") == [0, 1, 2]
    assert tokenizer.spec.vocab == ("a", "b", "c")


def test_char_tokenizer_names_an_unknown_character() -> None:
    tokenizer = CharTokenizer.from_text("abc")

    with pytest.raises(DataError, match=r"'ß' \(U\+00DF\) is not in the char tokenizer"):
        tokenizer.encode("aßc")


def test_char_tokenizer_rejects_ids_outside_its_vocabulary() -> None:
    tokenizer = CharTokenizer.from_text("abc")

    with pytest.raises(DataError, match=r"token id -1 is outside the char vocabulary \(0..2\)"):
        tokenizer.decode([0, -1])


def test_tiktoken_gpt2_round_trips_tinyshakespeare(shakespeare: str) -> None:
    tokenizer = TiktokenTokenizer("gpt2")

    assert tokenizer.decode(tokenizer.encode(shakespeare)) == shakespeare


def test_tiktoken_gpt2_round_trips_german_with_umlauts_and_emoji() -> None:
    tokenizer = TiktokenTokenizer("gpt2")

    assert tokenizer.decode(tokenizer.encode(GERMAN)) == GERMAN


def test_gpt2_resolves_to_r50k_base_and_keeps_its_name_in_the_spec() -> None:
    tokenizer = TiktokenTokenizer("gpt2")
    r50k = tiktoken.get_encoding("r50k_base")

    assert tokenizer.encode(GERMAN) == r50k.encode_ordinary(GERMAN)
    assert tokenizer.eot_id == 50256
    assert tokenizer.vocab_size == 50257
    assert tokenizer.spec == TokenizerSpec(kind="tiktoken", encoding="gpt2")


def test_tiktoken_treats_special_token_text_as_ordinary_text() -> None:
    tokenizer = TiktokenTokenizer("gpt2")
    text = "end<|endoftext|>start"

    ids = tokenizer.encode(text)

    assert 50256 not in ids
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("bad_id", [50300, -1])
def test_tiktoken_rejects_ids_outside_its_vocabulary(bad_id: int) -> None:
    tokenizer = TiktokenTokenizer("gpt2")

    with pytest.raises(DataError, match=rf"token id {bad_id} is outside the gpt2 vocabulary"):
        tokenizer.decode([31373, bad_id])


def test_unknown_tiktoken_encoding_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match=r"unknown tiktoken encoding 'gtp2'; use one of: .*r50k"):
        TiktokenTokenizer("gtp2")


def test_uncached_encoding_offline_tells_user_to_set_tiktoken_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty cache and a proxy on a closed local port make the download fail at once,
    # exactly as it does offline, without any traffic leaving the machine.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")

    with pytest.raises(DataError, match=r"'p50k_base'.*set TIKTOKEN_CACHE_DIR.*or go online"):
        TiktokenTokenizer("p50k_base")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No tiktoken cache and every proxy on a closed local port: any download fails at once.

    The bundled encoding's in-process cache is cleared before and after, so the test reads
    the ranks file itself and leaves no encoding built from a patched path behind."""
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    bundled_encoding.cache_clear()
    yield cache
    bundled_encoding.cache_clear()


def test_the_bundled_gpt2_ranks_give_every_id_the_bytes_r50k_base_gives_it() -> None:
    bundled = bundled_encoding()
    r50k = tiktoken.get_encoding("r50k_base")  # from the shared cache (tests/conftest.py)

    assert bundled.n_vocab == r50k.n_vocab
    assert bundled.eot_token == r50k.eot_token
    for token_id in range(r50k.n_vocab):
        assert bundled.decode_single_token_bytes(token_id) == r50k.decode_single_token_bytes(
            token_id
        )


def test_the_bundled_gpt2_encoding_gives_r50k_base_ids(shakespeare: str) -> None:
    bundled = bundled_encoding()
    r50k = tiktoken.get_encoding("r50k_base")
    text = shakespeare[:50_000] + GERMAN + "end<|endoftext|>start"

    assert bundled.encode_ordinary(text) == r50k.encode_ordinary(text)
    assert bundled.encode(text, allowed_special="all") == r50k.encode(text, allowed_special="all")


def test_gpt2_loads_from_the_package_with_no_network_and_no_cache(offline: Path) -> None:
    tokenizer = TiktokenTokenizer("gpt2")

    assert tokenizer.decode(tokenizer.encode(GERMAN)) == GERMAN
    assert tokenizer.vocab_size == 50257
    assert list(offline.iterdir()) == []  # nothing was downloaded or cached


def test_damaged_bundled_ranks_are_refused_in_one_line_naming_the_file(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = tmp_path / "r50k_base.tiktoken"
    damaged.write_bytes(BUNDLED_RANKS.read_bytes().replace(b" 50255\n", b" 50254\n"))
    monkeypatch.setattr(tokenizer_module, "BUNDLED_RANKS", damaged)

    with pytest.raises(DataError) as caught:
        TiktokenTokenizer("gpt2")

    message = str(caught.value)
    assert f"{damaged} are damaged" in message
    assert "reinstall ml-playground" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec",
    [
        TokenizerSpec(kind="char", vocab=("\n", " ", "a", "ä", "🍎")),
        TokenizerSpec(kind="tiktoken", encoding="gpt2"),
    ],
    ids=["char", "tiktoken"],
)
def test_spec_survives_a_json_round_trip(spec: TokenizerSpec) -> None:
    text = json.dumps(spec.to_json(), ensure_ascii=False)

    assert TokenizerSpec.model_validate_json(text) == spec


def test_tokenizer_from_spec_rebuilds_the_same_tokenizer() -> None:
    original = CharTokenizer.from_text(GERMAN)

    rebuilt = tokenizer_from_spec(original.spec)

    assert rebuilt.spec == original.spec
    assert rebuilt.encode(GERMAN) == original.encode(GERMAN)
    assert tokenizer_from_spec(TokenizerSpec(kind="tiktoken", encoding="gpt2")).eot_id == 50256


def test_specs_with_different_vocabularies_are_unequal_and_describe_differently() -> None:
    first = TokenizerSpec(kind="char", vocab=("a", "b"))
    second = TokenizerSpec(kind="char", vocab=("a", "c"))

    assert first != second
    assert first.describe() != second.describe()
    assert TokenizerSpec(kind="tiktoken", encoding="gpt2").describe() == "tiktoken gpt2"


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([], "not a JSON object"),
        ({"kind": "bpe"}, "'kind' input should be 'char' or 'tiktoken'"),
        ({"kind": "char", "vocab": "abc"}, "'vocab' input should be a valid array"),
        ({"kind": "char", "vocab": ["ab"]}, "'vocab.0' string should have at most 1 character"),
        ({"kind": "char", "vocab": ["a", "a"]}, "'vocab' must list distinct characters"),
        ({"kind": "tiktoken", "encoding": None}, "needs an 'encoding' name"),
    ],
)
def test_spec_from_bad_json_names_the_source_the_field_and_the_remedy(
    obj: object, problem: str
) -> None:
    expected = rf"ckpt_last\.pt is not a valid tokenizer spec: .*{re.escape(problem)}.*recreate it"
    with pytest.raises(DataError, match=expected):
        parse_artifact(TokenizerSpec, obj, "ckpt_last.pt", error=DataError, remedy=REMEDY)
