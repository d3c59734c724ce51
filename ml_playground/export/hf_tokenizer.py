"""A from-scratch run's tokenizer as a Hugging Face `tokenizers` tokenizer, same ids.

GPT-2's BPE: tiktoken's ranks become a byte-level BPE with the merge list that reproduces
them (`bpe_vocab.py`, the same derivation the GGUF export writes), GPT-2's pre-tokenizer
regex and `<|endoftext|>` as its one special token; ordinary text encodes to exactly
tiktoken's `encode_ordinary` ids. The literal text `<|endoftext|>` is the one exception:
Hugging Face matches it as the special token, as GPT-2's own tokenizer does.

A character vocabulary: a BPE model whose vocabulary is the run's characters, each at its
id, with no merges, so every character is its own token. A character outside the
vocabulary has no id and no unknown token to fall back to: `tokenizers` drops it (the BPE
model's documented behaviour without `unk_token`), where our `CharTokenizer` refuses it.

Other tiktoken encodings split text with another regex (cl100k's, o200k's) and are
refused in one line, like the GGUF export does: nothing here would test that the regex
translates faithfully.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ml_playground.data.tokenizer import (
    ENDOFTEXT,
    TIKTOKEN_ALIASES,
    TokenizerSpec,
    load_tiktoken_encoding,
)
from ml_playground.errors import ExportError
from ml_playground.export.bpe_vocab import CONTROL, GPT2_PRETOKENIZER_ENCODINGS, gpt2_vocab

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class HFTokenizerFiles:
    """The tokenizer and what transformers' tokenizer_config.json says about it."""

    tokenizer: Tokenizer
    size: int
    eos_token: str | None
    description: str

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.tokenizer.token_to_id(self.eos_token)


def hf_tokenizer(spec: TokenizerSpec) -> HFTokenizerFiles:
    """The `tokenizers` tokenizer that encodes text to the ids `spec`'s tokenizer gives."""
    if spec.kind == "char":
        if not spec.vocab:
            raise ExportError("the checkpoint's char tokenizer has no vocabulary; retrain it")
        return HFTokenizerFiles(
            tokenizer=char_tokenizer(spec.vocab),
            size=len(spec.vocab),
            eos_token=None,
            description=f"{spec.describe()}: one token per character, no merges",
        )
    resolved = exportable_bpe(spec)
    return HFTokenizerFiles(
        tokenizer=byte_level_bpe(resolved),
        size=load_tiktoken_encoding(resolved).n_vocab,
        eos_token=ENDOFTEXT,
        description=f"{spec.describe()} ({resolved}): GPT-2's byte-level BPE with its merges",
    )


def exportable_bpe(spec: TokenizerSpec) -> str:
    """The resolved tiktoken encoding, or a one-line refusal for one we cannot express."""
    encoding = spec.encoding or ""
    resolved = TIKTOKEN_ALIASES.get(encoding, encoding)
    if resolved not in GPT2_PRETOKENIZER_ENCODINGS:
        raise ExportError(
            f"cannot export tiktoken encoding {resolved!r} as a Hugging Face tokenizer"
            " faithfully: it splits text with another pre-tokenizer than GPT-2's; only"
            f" {', '.join(sorted(GPT2_PRETOKENIZER_ENCODINGS))} (GPT-2's BPE) export, or set"
            " [export.hf] enabled = false"
        )
    return resolved


def byte_level_bpe(resolved: str) -> Tokenizer:
    """GPT-2's byte-level BPE from tiktoken's ranks of `resolved` (r50k_base, p50k_base)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415 - heavy, export only

    vocab = gpt2_vocab(resolved, load_tiktoken_encoding(resolved))
    merges = [cast(tuple[str, str], tuple(merge.split(" "))) for merge in vocab.merges]
    ids = {token: token_id for token_id, token in enumerate(vocab.tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges))
    # ByteLevel splits with GPT-2's regex (use_regex) and maps bytes to GPT-2's alphabet,
    # which is how the vocabulary above spells its tokens; no prefix space, as tiktoken.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # pyright: ignore[reportAttributeAccessIssue] - the stubs lack the setter
    tokenizer.decoder = decoders.ByteLevel()  # pyright: ignore[reportAttributeAccessIssue] - as above
    # The control tokens (<|endoftext|>) are whole tokens, never split into bytes.
    specials = [
        AddedToken(token, special=True)
        for token, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind == CONTROL
    ]
    tokenizer.add_special_tokens(specials)  # pyright: ignore[reportUnknownMemberType] - the stubs leave its list untyped
    return tokenizer


def char_tokenizer(chars: tuple[str, ...]) -> Tokenizer:
    """One token per character of `chars`, at its index; no merges, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models  # noqa: PLC0415 - heavy, export only

    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(chars)}, merges=[]))
    # Fuse joins the characters back without the separator a decoder-less tokenizer adds.
    tokenizer.decoder = decoders.Fuse()  # pyright: ignore[reportAttributeAccessIssue] - the stubs lack the setter
    return tokenizer
