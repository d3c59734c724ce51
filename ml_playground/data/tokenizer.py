"""Tokenizers: characters or tiktoken's byte-level BPE, and what a Hugging Face one offers.

A `TokenizerSpec` is a from-scratch `Tokenizer`'s identity, stored in meta.json and in
checkpoints: two artifacts agree on their tokenizer exactly when their specs are equal,
and `tokenizer_from_spec` rebuilds the tokenizer from it. GPT-2's BPE ranks ship in
data/bundled/, so the common case needs no download; other tiktoken encodings use
tiktoken's own download and cache (`TIKTOKEN_CACHE_DIR`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Final, Literal, Protocol, Self

import tiktoken
from pydantic import StringConstraints, model_validator
from tiktoken_ext.openai_public import r50k_pat_str

from ml_playground.artifacts import Artifact
from ml_playground.errors import DataError

TokenizerKind = Literal["char", "tiktoken"]
TOKENIZER_KINDS: tuple[TokenizerKind, ...] = typing.get_args(TokenizerKind)

# tiktoken's own "gpt2" encoding needs two more files (vocab.bpe, encoder.json), while
# "r50k_base" has identical ranks, pattern and <|endoftext|> = 50256 in one file, so that
# single file is all an offline machine needs, and it is the one the package bundles.
TIKTOKEN_ALIASES: Mapping[str, str] = {"gpt2": "r50k_base"}
BUNDLED_ENCODING = "r50k_base"
BUNDLED_RANKS = Path(__file__).with_name("bundled") / "r50k_base.tiktoken"
# The SHA-256 tiktoken itself pins for r50k_base's ranks; a damaged install fails loudly
# instead of training on a subtly different vocabulary.
BUNDLED_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENDOFTEXT = "<|endoftext|>"
R50K_ENDOFTEXT_ID = 50256


class TokenizerSpec(Artifact):
    """Tokenizer spec.

    `encoding` is the tiktoken name as the user wrote it (e.g. "gpt2"); `vocab` is the
    char vocabulary, where a character's index is its id.
    """

    kind: TokenizerKind
    encoding: str | None = None
    vocab: tuple[Annotated[str, StringConstraints(min_length=1, max_length=1)], ...] | None = None

    @model_validator(mode="after")
    def _complete_for_its_kind(self) -> Self:
        if self.kind == "char":
            if not self.vocab:
                raise ValueError("a char tokenizer needs a non-empty 'vocab' list of characters")
            if len(set(self.vocab)) != len(self.vocab):
                raise ValueError("'vocab' must list distinct characters")
        elif not self.encoding:
            raise ValueError("a tiktoken tokenizer needs an 'encoding' name")
        return self

    def describe(self) -> str:
        """A short human name, e.g. "tiktoken gpt2" or "char (65 characters, vocab 3f2a9c1b)";
        the digest tells two vocabularies of one size apart in an error message."""
        if self.kind == "char":
            chars = "".join(self.vocab or ())
            digest = hashlib.sha256(chars.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            return f"char ({len(chars)} characters, vocab {digest})"
        return f"tiktoken {self.encoding}"


class HFTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the records datasets use, so data/ can take one
    without importing the backend that loads it (finetune/hub.py)."""

    @property
    def eos_token_id(self) -> int | None: ...
    @property
    def bos_token_id(self) -> int | None: ...
    @property
    def eos_token(self) -> str | None: ...
    def __len__(self) -> int: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]: ...
    def add_special_tokens(self, special_tokens_dict: Mapping[str, list[str]]) -> int: ...
    def save_pretrained(self, save_directory: str) -> object: ...
    def __call__(
        self, text: list[str], add_special_tokens: bool = True
    ) -> Mapping[str, list[list[int]]]: ...


class CharTokenizer:
    """One id per character; the vocabulary is the sorted set of the corpus's characters."""

    def __init__(self, vocab: Sequence[str]) -> None:
        # The spec validates the vocabulary: distinct single characters, at least one.
        self.spec: Final = TokenizerSpec(kind="char", vocab=tuple(vocab))
        self.vocab_size: Final = len(vocab)
        self.eot_id: Final = None  # characters have no end-of-text token
        self._ids = {ch: i for i, ch in enumerate(vocab)}
        # A dict, not the tuple, so a negative id is an error instead of wrapping around.
        self._chars = dict(enumerate(vocab))

    @classmethod
    def from_text(cls, text: Iterable[str]) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        try:
            return [ids[ch] for ch in text]
        except KeyError as exc:
            ch = typing.cast(str, exc.args[0])
            raise DataError(
                f"character {ch!r} (U+{ord(ch):04X}) is not in the char tokenizer's vocabulary"
                f" of {self.vocab_size} characters; prepare the dataset from text containing it"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        chars = self._chars
        try:
            return "".join([chars[int(i)] for i in ids])
        except KeyError as exc:
            raise DataError(
                f"token id {exc.args[0]} is outside the char vocabulary (0..{self.vocab_size - 1})"
            ) from None


class TiktokenTokenizer:
    """tiktoken's byte-level BPE, by encoding name ("gpt2", "cl100k_base", ...)."""

    def __init__(self, encoding: str) -> None:
        self.spec: Final = TokenizerSpec(kind="tiktoken", encoding=encoding)
        self._encoding = load_tiktoken_encoding(encoding)
        self.vocab_size: Final = self._encoding.n_vocab
        self.eot_id: Final[int | None] = self._encoding.eot_token

    def encode(self, text: str) -> list[int]:
        # Ordinary encoding: a corpus that happens to contain "<|endoftext|>" is text,
        # never the special token.
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        try:
            return self._encoding.decode(ids)
        except (KeyError, OverflowError):
            # tiktoken rejects ids past its vocabulary (KeyError) and negative ones
            # (OverflowError); a padded model vocabulary can sample either.
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise DataError(
                f"token id {bad} is outside the {self.spec.encoding} vocabulary"
                f" (0..{self.vocab_size - 1})"
            ) from None


Tokenizer = CharTokenizer | TiktokenTokenizer


def tokenizer_from_spec(spec: TokenizerSpec) -> Tokenizer:
    # A spec is complete for its kind (its validator), so the vocab or encoding is there.
    if spec.kind == "char":
        assert spec.vocab is not None
        return CharTokenizer(spec.vocab)
    assert spec.encoding is not None
    return TiktokenTokenizer(spec.encoding)


def is_known_encoding(name: str) -> bool:
    """Whether tiktoken (or the bundled GPT-2 ranks) has the encoding `name` or its alias."""
    resolved = TIKTOKEN_ALIASES.get(name, name)
    return resolved == BUNDLED_ENCODING or resolved in tiktoken.list_encoding_names()


def load_tiktoken_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (an alias such as "gpt2" allowed): bundled or cached."""
    resolved = TIKTOKEN_ALIASES.get(name, name)
    if resolved == BUNDLED_ENCODING:
        return bundled_encoding()
    known = tiktoken.list_encoding_names()
    if resolved not in known:
        raise DataError(f"unknown tiktoken encoding {name!r}; use one of: {', '.join(known)}")
    try:
        return tiktoken.get_encoding(resolved)
    except (OSError, ValueError) as exc:
        # OSError covers the failed download (requests' errors derive from it),
        # ValueError a cached file whose hash does not match.
        raise DataError(
            f"cannot load tiktoken encoding {name!r} ({resolved}): its ranks are not cached"
            f" and could not be downloaded ({type(exc).__name__}); set TIKTOKEN_CACHE_DIR to"
            " a folder holding the cached ranks, or go online"
        ) from exc


@functools.cache
def bundled_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE (r50k_base) built from the ranks file shipped in data/bundled/."""
    # tiktoken's own loader (load_tiktoken_bpe) would copy even a local file into
    # TIKTOKEN_CACHE_DIR, and fail where that folder is read-only; the format is simple
    # enough to read here: one "<base64 token> <rank>" pair per line.
    try:
        data = BUNDLED_RANKS.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read GPT-2's bundled BPE ranks {BUNDLED_RANKS} ({exc.strerror});"
            " reinstall ml-playground"
        ) from None
    if hashlib.sha256(data).hexdigest() != BUNDLED_RANKS_SHA256:
        raise DataError(
            f"GPT-2's bundled BPE ranks {BUNDLED_RANKS} are damaged (SHA-256 mismatch);"
            " reinstall ml-playground"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=BUNDLED_ENCODING,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: R50K_ENDOFTEXT_ID},
        explicit_n_vocab=R50K_ENDOFTEXT_ID + 1,
    )
