"""GPT-2's byte-level BPE, spelled the way GGUF stores it: tokens, token types and merges.

tiktoken keeps only ranks (token bytes -> id) and merges by lowest rank; llama.cpp and
Hugging Face tokenizers want the merge list instead, with every token written in GPT-2's
printable byte alphabet. Both describe the same tokenizer: a token of rank r is produced by
merging the two parts that BPE, restricted to ranks below r, leaves when run on its bytes.
Replaying that for every token recovers the merges in rank order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import tiktoken

from ml_playground.errors import ExportError

# gguf.TokenType values, spelled out so this module needs no gguf import.
NORMAL = 1
CONTROL = 3

# tiktoken encodings that split text with GPT-2's pre-tokenizer regex, which llama.cpp calls
# "gpt-2"; any other regex would make llama.cpp split text differently from training.
GPT2_PRETOKENIZER_ENCODINGS = frozenset({"r50k_base", "p50k_base"})
GPT2_PRE = "gpt-2"


@dataclass(frozen=True)
class ByteLevelVocab:
    """Everything the `tokenizer.ggml.*` keys hold for a GPT-2-style tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int
    pre: str = GPT2_PRE

    @property
    def eos_token(self) -> str:
        return self.tokens[self.eos_id]


def byte_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character.

    Bytes that are printable Latin-1 characters stand for themselves; the remaining 68
    (control characters, space, ...) are moved, in order, to code points from 256 up, so
    every token becomes a string without whitespace or control characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet = {byte: chr(byte) for byte in printable}
    moved = 0
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(256 + moved)
            moved += 1
    return alphabet


def spell(token: bytes, alphabet: Mapping[int, str]) -> str:
    return "".join(alphabet[byte] for byte in token)


def bpe_parts(token: bytes, ranks: Mapping[bytes, int], max_rank: int) -> list[bytes]:
    """Run byte-level BPE on `token` using only merges of rank below `max_rank`."""
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 1:
        best_rank, best_index = max_rank, -1
        for index in range(len(parts) - 1):
            rank = ranks.get(parts[index] + parts[index + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_index = rank, index
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list, in rank order, that makes BPE reproduce `ranks` exactly.

    Raises ValueError when some multi-byte token is not the merge of exactly two
    lower-ranked tokens: then no merge list describes this vocabulary.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = bpe_parts(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two tokens")
        merges.append((parts[0], parts[1]))
    return merges


def gpt2_vocab(encoding_name: str, encoding: tiktoken.Encoding) -> ByteLevelVocab:
    """GGUF's view of a tiktoken encoding that uses GPT-2's pre-tokenizer.

    `encoding_name` is the resolved tiktoken name, e.g. "r50k_base".
    """
    if encoding_name not in GPT2_PRETOKENIZER_ENCODINGS:
        raise ValueError(f"{encoding_name} does not use GPT-2's pre-tokenizer")
    specials = {encoding.encode_single_token(text): text for text in encoding.special_tokens_set}
    ranks: dict[bytes, int] = {}
    for token_id in range(encoding.n_vocab):
        if token_id in specials:
            continue
        try:
            ranks[encoding.decode_single_token_bytes(token_id)] = token_id
        except KeyError:
            continue  # an id without a token; counted as a gap below
    eos_id = encoding.eot_token
    if len(ranks) + len(specials) != encoding.n_vocab or eos_id not in specials:
        raise ExportError(
            f"tiktoken encoding {encoding_name!r} has gaps in its ids or no end-of-text token;"
            " GGUF needs one token per id"
        )
    try:
        return build_vocab(ranks, specials, eos_id)
    except ValueError as exc:
        raise ExportError(
            f"cannot derive BPE merges for tiktoken encoding {encoding_name!r} ({exc});"
            " GGUF cannot express this vocabulary"
        ) from None


def build_vocab(
    ranks: Mapping[bytes, int], specials: Mapping[int, str], eos_id: int
) -> ByteLevelVocab:
    """Tokens in id order (ordinary ones spelled in GPT-2's alphabet) with their merges.

    Ids must run from 0 without gaps across `ranks` and `specials`.
    """
    alphabet = byte_alphabet()
    merges = merges_from_ranks(ranks)
    by_id: dict[int, tuple[str, int]] = {
        rank: (spell(token, alphabet), NORMAL) for token, rank in ranks.items()
    }
    by_id.update({token_id: (text, CONTROL) for token_id, text in specials.items()})
    ordered = [by_id[token_id] for token_id in range(len(by_id))]
    return ByteLevelVocab(
        tokens=[text for text, _ in ordered],
        token_types=[kind for _, kind in ordered],
        merges=[f"{spell(left, alphabet)} {spell(right, alphabet)}" for left, right in merges],
        eos_id=eos_id,
    )
