"""Chat records rendered as the model sees them: tokens, and which of them are targets.

A "text" record trains on every token, then EOS; a "prompt_completion" record is the
prompt, then the completion and EOS, and only the completion and EOS train; a "messages"
record is rendered with the tokenizer's chat template and only the assistant turns train,
not the system and user turns or the template's own framing.

Assistant spans come from the template itself: where it marks them with
`{% generation %}`, from transformers' assistant mask; otherwise by rendering the
conversation up to each assistant turn (with the generation prompt: where the answer
starts) and through it (where the turn ends), and finding those prefixes in the tokens
of the whole conversation. A record the template renders otherwise (a prefix that is not
a prefix, a boundary inside a token) is a `BadRecordError`, counted, not guessed at.
Generation renders its prompts with the same template (sample/chat_prompt.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# transformers renders chat templates with jinja2, so it is there wherever they are.
from jinja2 import TemplateError

from ml_playground.data.tokenizer import HFTokenizer
from ml_playground.errors import DataError

GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")

Span = tuple[int, int]


class ChatTokenizer(HFTokenizer, Protocol):
    """A Hugging Face tokenizer with the chat template machinery."""

    chat_template: str | None
    name_or_path: str
    all_special_ids: list[int]

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TokenRecord:
    """A record as the model sees it: its tokens, and which of them are targets."""

    input_ids: tuple[int, ...]
    trained_spans: tuple[Span, ...]

    def mask(self) -> list[int]:
        """One flag per token: 1 where the token is a target."""
        flags = [0] * len(self.input_ids)
        for start, end in self.trained_spans:
            flags[start:end] = [1] * (end - start)
        return flags


class BadRecordError(Exception):
    """A record that cannot be used; `reason` is what the tally counts it under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def text_record(tokenizer: HFTokenizer, text: str) -> TokenRecord:
    ids = [*_encode_opening(tokenizer, text), eos_id(tokenizer)]
    return TokenRecord(tuple(ids), ((0, len(ids)),))


def prompt_completion_record(tokenizer: HFTokenizer, prompt: str, completion: str) -> TokenRecord:
    prompt_ids = _encode_opening(tokenizer, prompt)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    ids = [*prompt_ids, *completion_ids, eos_id(tokenizer)]
    return TokenRecord(tuple(ids), ((len(prompt_ids), len(ids)),))


def messages_record(tokenizer: ChatTokenizer, messages: Sequence[Mapping[str, str]]) -> TokenRecord:
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    template = tokenizer.chat_template or ""
    if GENERATION_BLOCK.search(template):
        return _generation_masked(tokenizer, conversation)
    return _prefix_masked(tokenizer, conversation)


def _generation_masked(tokenizer: ChatTokenizer, conversation: list[dict[str, str]]) -> TokenRecord:
    encoded = _render(
        tokenizer, conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    # The spans are the runs of set flags: each opens and closes where a flag flips.
    flags = np.concatenate(([False], np.asarray(encoded["assistant_masks"], dtype=bool), [False]))
    edges = np.flatnonzero(flags[1:] != flags[:-1]).tolist()
    spans = tuple(zip(edges[::2], edges[1::2], strict=True))
    return TokenRecord(tuple(int(i) for i in encoded["input_ids"]), spans)


def _prefix_masked(tokenizer: ChatTokenizer, conversation: list[dict[str, str]]) -> TokenRecord:
    full = _render(tokenizer, conversation, tokenize=False)
    ids = tokenizer.encode(full, add_special_tokens=False)
    spans: list[Span] = []
    for turn, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        opened = _render(tokenizer, conversation[:turn], tokenize=False, add_generation_prompt=True)
        closed = _render(tokenizer, conversation[: turn + 1], tokenize=False)
        start = _boundary(tokenizer, full, ids, opened)
        end = _boundary(tokenizer, full, ids, closed)
        if start < end:
            spans.append((start, end))
    return TokenRecord(tuple(ids), tuple(spans))


def _boundary(tokenizer: HFTokenizer, full: str, ids: Sequence[int], prefix: str) -> int:
    """How many tokens of `full` the rendered `prefix` covers."""
    if not full.startswith(prefix):
        raise BadRecordError("template renders a turn differently in a longer conversation")
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    if list(ids[: len(prefix_ids)]) != prefix_ids:
        raise BadRecordError("a turn boundary falls inside a token")
    return len(prefix_ids)


class TemplateFailedError(DataError):
    """The chat template itself failed, not the record (prepare raises it again naming the
    row): a template is user code, so anything its expressions raise (a TypeError, a
    ZeroDivisionError) is one line naming the template, not a traceback."""

    def __init__(self, tokenizer: ChatTokenizer, exc: Exception) -> None:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        super().__init__(
            f"the chat template of {tokenizer.name_or_path} failed ({detail}); fix the "
            "template ([prepare] chat_template, or chat_template.jinja in that tokenizer folder)"
        )


def _render(tokenizer: ChatTokenizer, conversation: list[dict[str, str]], **kwargs: Any) -> Any:
    try:
        return tokenizer.apply_chat_template(conversation, **kwargs)
    except (ValueError, TemplateError) as exc:
        # Templates reject conversations they cannot render with raise_exception(...).
        raise BadRecordError("the chat template refused it", str(exc)) from None
    except Exception as exc:  # user code: whatever it raises is one line
        raise TemplateFailedError(tokenizer, exc) from None


def _encode_opening(tokenizer: HFTokenizer, text: str) -> list[int]:
    """`text` as a record begins: with <bos> where the tokenizer adds one."""
    return opening(tokenizer.encode(text, add_special_tokens=True), tokenizer.eos_token_id)


def opening(ids: list[int], eos: int | None) -> list[int]:
    """A text's ids (with the tokenizer's special tokens) as a record begins: without the
    EOS some tokenizers (Llama's with add_eos_token) close every text with."""
    return ids[:-1] if ids and ids[-1] == eos else ids


def eos_id(tokenizer: HFTokenizer, described: str = "the base model's tokenizer") -> int:
    """The id that closes every record; a tokenizer without one is one error line naming it
    (`described`, e.g. "the tokenizer in data/tokenizer")."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            f"{described} has no end-of-sequence token, so a fine-tuned model could never "
            "learn to stop; use a base model whose tokenizer has one"
        )
    return eos
