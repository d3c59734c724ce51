"""The Ollama TEMPLATE of a chat fine-tune: the tokenizer's chat template, written in Go.

A model fine-tuned on conversations learned them as its tokenizer's Jinja chat template
renders them; Ollama renders a conversation with the Modelfile's Go text/template over
`.System`, `.Messages` (each `.Role` and `.Content`) and, in its older one-turn form,
`.Prompt` and `.Response`. Jinja cannot be translated into Go in general, so the shape of
the template is read off what it renders: conversations whose contents are sentinel words,
one and two turns, with and without a system prompt, show each role's opening and closing
text, the generation prompt that opens the answer, where a system prompt goes and what
stands there when none is given. The shape must then reproduce a longer conversation, with
and without a system prompt, exactly; a template it does not reproduce is refused, never
approximated. ChatML (Qwen2/2.5: `<|im_start|>role\\n...<|im_end|>\\n`, a default system
turn) and Gemma (`<start_of_turn>user\\n...<end_of_turn>\\n`, the assistant called `model`,
the system prompt at the start of the first user turn) are both such shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

# transformers renders chat templates with jinja2, so it is there wherever they are.
from jinja2 import TemplateError

from ml_playground.data.rendering import ChatTokenizer
from ml_playground.errors import ExportError

# Contents a template writes unchanged: no whitespace to trim, no markup, none part of another.
SYSTEM = "ProbeSystemText"
USERS = ("ProbeUserOne", "ProbeUserTwo", "ProbeUserThree")
ASSISTANTS = ("ProbeAssistantOne", "ProbeAssistantTwo")

Message = dict[str, str]


class TemplateTokenizer(ChatTokenizer, Protocol):
    @property
    def bos_token(self) -> str | None: ...


class ShapeError(Exception):
    """The chat template renders conversations in a way no ChatShape describes."""


@dataclass(frozen=True)
class ChatShape:
    """What a chat template writes around the messages of a conversation.

    Every conversation starts with `opening`. A system prompt either has a turn of its own,
    `system_open` + text + `system_close` (holding `default_system` when the conversation
    has none; no turn at all when that is None), or, where `system_separator` is set, opens
    the first user turn, followed by the separator. Each turn is its role's open text, the
    content and its close text; after a final user turn, `generation` opens the answer.
    """

    opening: str
    system_open: str
    system_close: str
    default_system: str | None
    system_separator: str | None
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    generation: str

    def render(self, conversation: Sequence[Message]) -> str:
        """The text the tokenizer's template renders, with the generation prompt."""
        system = next((m["content"] for m in conversation if m["role"] == "system"), None)
        text = self.opening
        if self.system_separator is None and (system or self.default_system) is not None:
            text += self.system_open + (system or self.default_system or "") + self.system_close
        first_user = True
        for message in conversation:
            if message["role"] == "user":
                text += self.user_open
                if first_user and system and self.system_separator is not None:
                    text += system + self.system_separator
                text += message["content"] + self.user_close
                first_user = False
            elif message["role"] == "assistant":
                text += self.assistant_open + message["content"] + self.assistant_close
        if conversation and conversation[-1]["role"] == "user":
            text += self.generation
        return text

    def end_of_turn(self) -> str:
        """The text that ends the assistant's turn, a stop for Ollama ('' if none)."""
        return self.assistant_close.strip()


@dataclass(frozen=True)
class OllamaChat:
    """The chat template as Ollama's TEMPLATE, with the stops that end an answer."""

    template: str
    stops: tuple[str, ...]
    description: str


def ollama_chat(tokenizer: TemplateTokenizer, model: str) -> OllamaChat:
    """The Go template that renders conversations as `tokenizer`'s chat template does."""
    try:
        shape = derive_shape(tokenizer)
    except ShapeError as err:
        raise ExportError(
            f"cannot write the chat template of {model} as an Ollama template: {err}; set"
            " [export.ollama] template to a Go template that renders it (and stop to its"
            " end-of-turn text)"
        ) from None
    bos = runtime_bos(tokenizer)
    # llama.cpp and Ollama put BOS in front of a prompt themselves when the GGUF says so,
    # which the converter takes from the tokenizer; a template writing it too would give
    # the model two. (Where the tokenizer adds BOS but its chat template writes none, the
    # runtime still adds one that fine-tuning did not see: the GGUF decides that.)
    if bos and shape.opening.startswith(bos):
        shape = replace(shape, opening=shape.opening[len(bos) :])
    stop = shape.end_of_turn()
    return OllamaChat(
        template=go_template(shape),
        stops=(stop,) if stop else (),
        description=(
            f"Prompt format: chat, rendered as {model}'s chat template renders it"
            f" ({_system_place(shape)}); use `ollama run` or Ollama's chat API."
        ),
    )


def runtime_bos(tokenizer: TemplateTokenizer) -> str | None:
    """The BOS text the runtime puts in front of a prompt: the tokenizer's, if encoding
    adds it (the GGUF's add_bos_token follows the tokenizer), else None."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None or tokenizer.encode("a", add_special_tokens=True)[:1] != [bos_id]:
        return None
    return tokenizer.bos_token


def derive_shape(tokenizer: ChatTokenizer) -> ChatShape:
    """The template's shape, read off probe conversations and checked on longer ones."""
    u1, u2, u3 = (_message("user", text) for text in USERS)
    a1, a2 = (_message("assistant", text) for text in ASSISTANTS)
    system = _message("system", SYSTEM)

    def render(*conversation: Message, generation: bool = True) -> str:
        return _render(tokenizer, list(conversation), generation)

    before_user, after_user = _pieces(render(u1), USERS[0])
    before, user_close = _pieces(render(u1, generation=False), USERS[0])
    _require(before == before_user, "the generation prompt changes the text before it")
    generation = _strip_prefix(after_user, user_close, "the generation prompt")
    _, user_then_assistant, assistant_close = _pieces(
        render(u1, a1, generation=False), USERS[0], ASSISTANTS[0]
    )
    assistant_open = _strip_prefix(user_then_assistant, user_close, "the assistant's turn")
    _, _, assistant_then_user, _ = _pieces(render(u1, a1, u2), USERS[0], ASSISTANTS[0], USERS[1])
    user_open = _strip_prefix(assistant_then_user, assistant_close, "the second user turn")
    head = _strip_suffix(before_user, user_open, "the first user turn")
    without_system = ChatShape(
        opening=head,
        system_open="",
        system_close="",
        default_system=None,
        system_separator=None,
        user_open=user_open,
        user_close=user_close,
        assistant_open=assistant_open,
        assistant_close=assistant_close,
        generation=generation,
    )
    before_system, system_then_user, _ = _pieces(render(system, u1), SYSTEM, USERS[0])
    if before_system == before_user:
        # The system prompt opens the first user turn (Gemma).
        shape = replace(without_system, system_separator=system_then_user)
    else:
        system_close = _strip_suffix(system_then_user, user_open, "the system turn")
        shape = _system_turn(without_system, before_system, system_close)
    for conversation in ([u1, a1, u2, a2, u3], [system, u1, a1, u2, a2, u3]):
        _require(
            shape.render(conversation) == render(*conversation),
            "a three-turn conversation renders otherwise than its first turns suggest",
        )
    return shape


def _system_turn(shape: ChatShape, before_system: str, system_close: str) -> ChatShape:
    """A system prompt in a turn of its own: `shape.opening` is what stands before the first
    user turn without one, `before_system` + prompt + `system_close` what stands there with
    one."""
    head = shape.opening
    default = head[len(before_system) : len(head) - len(system_close)]
    if len(head) >= len(before_system) + len(system_close) and (
        before_system + default + system_close == head
    ):
        # Without a system prompt the template writes the turn with its own (Qwen2.5).
        return replace(
            shape, opening=before_system, system_close=system_close, default_system=default
        )
    _require(
        before_system.startswith(head),
        "the text before a system prompt is not what precedes a conversation without one",
    )
    return replace(shape, system_open=before_system[len(head) :], system_close=system_close)


# --- the Go template ------------------------------------------------------------------------


def go_template(shape: ChatShape) -> str:
    """The shape as an Ollama TEMPLATE.

    Ollama (0.3 on) renders a template that mentions .Messages with every message of the
    conversation in it, the system prompt also in .System; older versions know only
    .System, .Prompt and .Response, one turn at a time, which the else branch serves.
    After the last message, an assistant message stays open (Ollama continues it) and any
    other gets the generation prompt.
    """
    first_user = shape.system_separator is not None
    parts: list[str | _Action] = [
        _Action("if .Messages"),
        *_header(shape),
        *([_Action("$first := true")] if first_user else []),
        _Action("range $i, $_ := .Messages"),
        _Action("$last := eq (len (slice $.Messages $i)) 1"),
        _Action('if eq .Role "user"'),
        shape.user_open,
        *_merged_system(shape, "$first"),
        *([_Action("$first = false")] if first_user else []),
        _Action(".Content"),
        shape.user_close,
        _Action('else if eq .Role "assistant"'),
        shape.assistant_open,
        _Action(".Content"),
        _Action("if not $last"),
        shape.assistant_close,
        _Action("end"),
        _Action("end"),
        _Action('if and $last (ne .Role "assistant")'),
        shape.generation,
        _Action("end"),
        _Action("end"),
        _Action("else"),
        *_header(shape),
        shape.user_open,
        *_merged_system(shape, None),
        _Action(".Prompt"),
        shape.user_close,
        shape.generation,
        _Action(".Response"),
        _Action("if .Response"),
        shape.assistant_close,
        _Action("end"),
        _Action("end"),
    ]
    return _layout(parts)


@dataclass(frozen=True)
class _Action:
    """A Go template action, `{{ code }}`."""

    code: str


def _header(shape: ChatShape) -> list[str | _Action]:
    """What precedes the first user turn, with `.System` where the template has it."""
    if shape.system_separator is not None:
        return [shape.opening]
    prompt: list[str | _Action] = [shape.system_open, _Action("$.System"), shape.system_close]
    if shape.default_system is None:
        return [shape.opening, _Action("if $.System"), *prompt, _Action("end")]
    return [
        shape.opening,
        shape.system_open,
        _Action("if $.System"),
        _Action("$.System"),
        _Action("else"),
        shape.default_system,
        _Action("end"),
        shape.system_close,
    ]


def _merged_system(shape: ChatShape, first: str | None) -> list[str | _Action]:
    """The system prompt at the start of the first user turn, where the template puts it."""
    if shape.system_separator is None:
        return []
    condition = f"and {first} $.System" if first else "$.System"
    return [
        _Action(f"if {condition}"),
        _Action("$.System"),
        shape.system_separator,
        _Action("end"),
    ]


def _layout(parts: Sequence[str | _Action]) -> str:
    """Template text, one action per line where that changes nothing.

    A line break goes only between two actions, and the second one trims it (`{{-`): Go's
    trim markers remove all whitespace next to them, so one next to literal text would eat
    the newlines the chat template needs. Literal text holding `{{` is written as a Go
    string constant, which Go's lexer reads back unchanged.
    """
    text = ""
    after_action = False
    for part in parts:
        if isinstance(part, _Action):
            text += ("\n{{- " if after_action else "{{ ") + part.code + " }}"
            after_action = True
        elif part:
            text += f"{{{{ {json.dumps(part, ensure_ascii=False)} }}}}" if "{{" in part else part
            after_action = "{{" in part
    return text


# --- probing ---------------------------------------------------------------------------------


def _message(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _render(tokenizer: ChatTokenizer, conversation: list[Message], generation: bool) -> str:
    try:
        text: object = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=generation
        )
    except (ValueError, TemplateError) as exc:
        # Templates refuse conversations they cannot render with raise_exception(...).
        raise ShapeError(f"it refuses a plain conversation ({exc})") from None
    except Exception as exc:  # a template is user code: one line, any error
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ShapeError(f"it fails rendering a plain conversation ({detail})") from None
    if not isinstance(text, str):
        raise ShapeError("it does not render a conversation as text")
    return text


def _pieces(text: str, *contents: str) -> list[str]:
    """The texts before, between and after `contents`, which must each occur once, in order."""
    pieces: list[str] = []
    rest = text
    for content in contents:
        role = "system" if content == SYSTEM else "user" if content in USERS else "assistant"
        _require(text.count(content) == 1, f"it does not write a {role} message once, verbatim")
        before, found, rest = rest.partition(content)
        _require(bool(found), "it reorders the messages")
        pieces.append(before)
    return [*pieces, rest]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    _require(text.startswith(prefix), f"{what} does not follow the turn before it as expected")
    return text[len(prefix) :]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    _require(text.endswith(suffix), f"{what} does not open as later user turns do")
    return text[: len(text) - len(suffix)]


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise ShapeError(reason)


def _system_place(shape: ChatShape) -> str:
    if shape.system_separator is not None:
        return "a system prompt opens the first user turn"
    if shape.default_system:
        return f"without a system prompt the template's own: {shape.default_system!r}"
    return "a system prompt has a turn of its own"
