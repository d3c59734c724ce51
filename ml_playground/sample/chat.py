"""`chat`: talk to a trained model, one streamed reply after each line typed.

Each line read is a user turn. When the model has a chat template (`LoadedModel.render_chat`)
the whole conversation so far is rendered with it, ending where the answer begins, and the
reply ends at the template's end of turn or EOS. Without one (the from-scratch GPT, a
fine-tune of a base model without a template) each line is plain text to continue: the
prompt is the transcript so far, every line the user typed starting on a new line, each
followed by what the model wrote after it. Either way `[export.ollama] system`, if set,
opens the conversation, as it opens the exported model's.

Every turn is prefilled from the start with a fresh cache rather than extending the last
turn's: the template may render earlier turns differently once later ones exist, and the
rendered conversation is what the model must see. Decoding a reply, not the prefill,
is where the time goes.

Replies go to stdout, everything else (which model, resets, trimming, and after each reply
one line saying how fast it came, see generate.Speed) to stderr, so
`chat EXP < questions.txt > answers.txt` keeps only the answers. A `> ` prompt appears only
when stdin is a terminal. When the conversation no longer leaves room for a reply in the
model's context, the oldest turns go (the system prompt stays) and stderr says so.

Lines that start with `/` and hold no space are commands: /reset, /exit, /help. End of input
(Ctrl-D) and /exit end the chat with exit code 0. Ctrl-C during a reply stops that reply,
which stays in the conversation as far as it got; Ctrl-C at the prompt ends the chat like
any interrupted command (exit 130).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import torch

from ml_playground.config import ExperimentConfig, SampleSettings
from ml_playground.errors import DataError, UserError
from ml_playground.sample.backend import LoadedModel, Message
from ml_playground.sample.generate import generate
from ml_playground.sample.prompt import encode_prompt
from ml_playground.sample.stream import TextStream

PROMPT_MARKER = "> "
HELP = (
    "commands: /reset forgets the conversation, /exit or Ctrl-D ends the chat, "
    "Ctrl-C stops a reply (at the prompt it ends the chat), /help shows this line"
)


@dataclass(frozen=True)
class Turn:
    user: str
    reply: str


@dataclass
class Conversation:
    """What the model is shown before the next line: the system prompt and the turns so far."""

    system: str | None
    turns: list[Turn] = field(default_factory=list[Turn])

    def messages(self, user: str) -> list[Message]:
        """The turns as chat messages, with `user` as the newest."""
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.reply})
        messages.append({"role": "user", "content": user})
        return messages

    def transcript(self, user: str) -> str:
        """The text so far with `user` continuing it; each line the user typed (and the
        system prompt) begins on a new line, each reply follows its line as written."""
        parts = [self.system] if self.system else []
        parts += [turn.user + turn.reply for turn in self.turns]
        text = ""
        for part in [*parts, user]:
            if text and not text.endswith("\n"):
                text += "\n"
            text += part
        return text


PromptOf = Callable[[Conversation, str], list[int]]


def prompt_builder(model: LoadedModel) -> PromptOf:
    """How a conversation and a new line become the ids the reply follows."""
    render = model.render_chat
    if render is not None:
        return lambda conversation, user: render(conversation.messages(user))
    return lambda conversation, user: encode_prompt(model, conversation.transcript(user)).ids


@dataclass(frozen=True)
class Streams:
    """Where the chat reads lines and writes replies and status lines."""

    lines: TextIO
    replies: TextIO
    status: TextIO


NOT_UTF8 = (
    "the input is not UTF-8; send UTF-8 text (convert a file with iconv, or set the "
    "terminal to UTF-8)"
)


def chat(config: ExperimentConfig, model: LoadedModel, streams: Streams | None = None) -> None:
    """Read lines until /exit or end of input, answering each; see the module docstring."""
    streams = streams or Streams(sys.stdin, sys.stdout, sys.stderr)
    session = ChatSession(config, model, streams)
    try:
        session.run()
    except BrokenPipeError:
        # Whoever read the replies has gone (`chat ... | head`); nothing is left to say.
        # Point stdout at /dev/null so that Python's final flush does not complain either.
        if streams.replies is sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@functools.cache
def _readline_loaded() -> bool:
    """Load GNU readline (or libedit), which gives input() arrow keys, editing and history;
    False where Python has none (Windows). Loaded only for a terminal: on import it may
    write terminal control codes to stdout."""
    try:
        importlib.import_module("readline")
    except ImportError:
        return False
    return True


def _edited_line() -> str | None:
    """One line typed at the terminal, edited with readline; None at Ctrl-D."""
    try:
        return input(PROMPT_MARKER) + "\n"
    except EOFError:
        print(file=sys.stderr)  # the shell's next prompt starts on a line of its own
        return None


class ChatSession:
    def __init__(self, config: ExperimentConfig, model: LoadedModel, streams: Streams) -> None:
        self.model = model
        self.streams = streams
        self.interactive = streams.lines.isatty()
        # One reply per turn; `start` and `num_samples` belong to `sample`.
        self.settings: SampleSettings = config.sample.sample.model_copy(update={"num_samples": 1})
        self.generator = torch.Generator(device=model.device).manual_seed(
            config.sample.runtime.seed
        )
        self.conversation = Conversation(system=config.export.ollama.system)
        self.prompt_of = prompt_builder(model)

    def run(self) -> None:
        self.say(self.opening_line())
        if self.conversation.system:
            # A template that refuses a system turn says so now, not after the first line.
            self.prompt_of(self.conversation, "")
            self.say("system prompt from [export.ollama] system")
        self.say(HELP)
        while (line := self.read_line()) is not None:
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if text.startswith("/") and not any(ch.isspace() for ch in text):
                if not self.command(text):
                    return
                continue
            try:
                self.answer(text)
            except UserError as exc:
                if not self.interactive:
                    raise  # a script gets exit code 2 like every other error
                self.say(f"error: {exc} (not sent)")

    def opening_line(self) -> str:
        if self.model.render_chat is not None:
            return f"chat in the run's chat template: {self.model.description}"
        return (
            "plain continuation (no chat template): each line continues the transcript so "
            f"far; {self.model.description}"
        )

    def read_line(self) -> str | None:
        try:
            if self.edits_lines():
                return _edited_line()
            if self.interactive:
                self.streams.status.write(PROMPT_MARKER)
                self.streams.status.flush()
            line = self.streams.lines.readline()
        except KeyboardInterrupt:
            self.streams.status.write("\n")  # the CLI's "interrupted" line, on a line of its own
            raise
        except UnicodeDecodeError:
            raise DataError(NOT_UTF8) from None
        # Under a C or POSIX locale Python reads undecodable bytes as lone surrogates
        # (U+DC80..U+DCFF); no tokenizer knows them, and the fix is the input's encoding.
        if line and any("\udc80" <= char <= "\udcff" for char in line):
            raise DataError(NOT_UTF8)
        return line or None

    def edits_lines(self) -> bool:
        """Whether the person at the terminal gets line editing and history (readline).

        `input()` is what readline edits, and it writes its prompt to stdout: only when
        both ends are this terminal, or the marker would land among redirected replies.
        """
        streams = self.streams
        return (
            self.interactive
            and streams.lines is sys.stdin
            and streams.replies is sys.stdout
            and sys.stdout.isatty()
            and _readline_loaded()
        )

    def command(self, text: str) -> bool:
        """Do the command; False when the chat should end."""
        if text == "/exit":
            return False
        if text == "/reset":
            self.conversation.turns.clear()
            self.say("conversation reset")
        elif text == "/help":
            self.say(HELP)
        else:
            self.say(f"unknown command {text}; {HELP}")
        return True

    def answer(self, user: str) -> None:
        prompt = self.fitted_prompt(user)
        if prompt is None:
            return
        ids: list[int] = []
        speeds: list[str] = []
        stream = TextStream(self.model.decode, prompt)

        def show(row: int, token: int) -> None:
            del row  # one row only
            ids.append(token)
            self.write(stream.push(token))

        try:
            generate(
                self.model.new_step(),
                prompt,
                self.settings,
                stop_ids=self.model.stop_ids,
                generator=self.generator,
                on_token=show,
                on_speed=lambda speed: speeds.append(speed.line()),
            )
        except KeyboardInterrupt:
            self.write(stream.flush() + "\n")
            self.say("reply stopped; what it said so far stays in the conversation")
        else:
            self.write(stream.flush() + "\n")
            for line in speeds:
                self.say(line)
        self.conversation.turns.append(Turn(user, self.model.decode(ids)))

    def fitted_prompt(self, user: str) -> list[int] | None:
        """The prompt for `user`, after dropping the oldest turns until a reply fits in the
        context; None (and a note) when `user` alone does not fit."""
        prompt = self.prompt_of(self.conversation, user)
        context = self.model.context_size
        if context is None:
            return prompt
        budget = context - min(self.settings.max_new_tokens, context // 2)
        turns = self.conversation.turns
        dropped = 0
        while len(prompt) > budget and turns:
            turns.pop(0)
            dropped += 1
            prompt = self.prompt_of(self.conversation, user)
        if dropped:
            kept = "; the system prompt stays" if self.conversation.system else ""
            self.say(
                f"the conversation outgrew the model's context of {context} tokens: "
                f"dropped the oldest {dropped} turn(s){kept}"
            )
        if len(prompt) > context:
            self.say(
                f"not sent: this line makes a prompt of {len(prompt)} tokens, more than the "
                f"model's context of {context}; shorten it"
            )
            return None
        return prompt

    def write(self, text: str) -> None:
        if text:
            self.streams.replies.write(text)
            self.streams.replies.flush()

    def say(self, line: str) -> None:
        self.streams.status.write(line + "\n")
        self.streams.status.flush()
