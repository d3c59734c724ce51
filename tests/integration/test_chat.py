"""`chat` in-process: what the model reads each turn, resets, trimming, stops, Ctrl-C.

A tiny Qwen2 chat fine-tune (tests/finetune_helpers.py) trained for a few steps, a tiny
Gemma3 with Gemma's template, and a random character-level GPT. A recording step wraps
the backend's real step to capture each turn's prompt; where a test needs a reply to end
at a given token, a forcing step makes that token the only choice after a few.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest
import torch
from torch import Tensor

from ml_playground.config import ExperimentConfig
from ml_playground.config_loader import load_config
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from ml_playground.sample.backend import LoadedModel
from ml_playground.sample.chat import Streams, chat
from ml_playground.sample.generate import Step
from ml_playground.sample.gpt import load_gpt
from ml_playground.sample.hf import load_hf
from ml_playground.sample.run import sample_texts
from tests.experiments import chat_lora, saved_char_gpt
from tests.finetune_helpers import TURN_TOKENS, Family, TinyModels
from tests.toml_helpers import TomlValue

GREEDY: dict[str, TomlValue] = {"sample.sample.temperature": 0.0, "sample.sample.max_new_tokens": 8}


@dataclasses.dataclass(frozen=True)
class ChatRun:
    config: ExperimentConfig
    tokenizer: ChatTokenizer


def chat_run(
    folder: Path,
    tiny_models: TinyModels,
    family: Family,
    settings: dict[str, TomlValue] | None = None,
    *,
    trained: bool = True,
) -> ChatRun:
    loaded = chat_lora(folder, tiny_models, family, GREEDY | (settings or {}), trained=trained)
    tokenizer = load_tokenizer(ModelSource.local(folder / "model"))
    return ChatRun(loaded.config, cast(ChatTokenizer, tokenizer))


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> ChatRun:
    return chat_run(tmp_path_factory.mktemp("qwen-chat"), tiny_models, "qwen2")


@dataclasses.dataclass
class Session:
    replies: str
    status: str
    prompts: list[list[int]]  # what the model read at the start of each reply


def recorded(model: LoadedModel, prompts: list[list[int]]) -> LoadedModel:
    """`model` whose steps note the ids of their first call: each reply's prompt."""

    def new_step() -> Step:
        inner = model.new_step()
        calls = 0

        def step(ids: Tensor) -> Tensor:
            nonlocal calls
            if calls == 0:
                prompts.append([int(i) for i in ids[0]])
            calls += 1
            return inner(ids)

        return step

    return dataclasses.replace(model, new_step=new_step)


def talk(config: ExperimentConfig, model: LoadedModel, lines: Sequence[str]) -> Session:
    prompts: list[list[int]] = []
    replies, status = io.StringIO(), io.StringIO()
    text = "".join(line + "\n" for line in lines)
    chat(config, recorded(model, prompts), Streams(io.StringIO(text), replies, status))
    return Session(replies.getvalue(), status.getvalue(), prompts)


def rendered(tokenizer: ChatTokenizer, messages: list[dict[str, str]]) -> list[int]:
    ids: object = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(cast(list[int], ids))


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_turn_two_reads_the_whole_conversation_rendered_with_the_chat_template(
    qwen_run: ChatRun,
) -> None:
    model = load_hf(qwen_run.config)
    first = talk(qwen_run.config, model, ["Wer spricht?"])
    reply = first.replies.removesuffix("\n")

    session = talk(qwen_run.config, model, ["Wer spricht?", "Und dann?"])

    assert session.prompts[0] == rendered(qwen_run.tokenizer, [user("Wer spricht?")])
    history = [user("Wer spricht?"), {"role": "assistant", "content": reply}, user("Und dann?")]
    assert session.prompts[1] == rendered(qwen_run.tokenizer, history)
    assert session.replies.startswith(first.replies)
    assert "chat in the run's chat template" in session.status.splitlines()[0]


def test_reset_forgets_the_conversation(qwen_run: ChatRun) -> None:
    model = load_hf(qwen_run.config)

    session = talk(qwen_run.config, model, ["Wer spricht?", "/reset", "Und dann?"])

    assert session.prompts[1] == rendered(qwen_run.tokenizer, [user("Und dann?")])
    assert "conversation reset" in session.status


def test_exit_ends_the_chat_and_later_lines_are_not_answered(qwen_run: ChatRun) -> None:
    model = load_hf(qwen_run.config)

    session = talk(qwen_run.config, model, ["Wer spricht?", "/exit", "Und dann?"])

    assert len(session.prompts) == 1


def test_the_system_prompt_opens_every_turn_and_outlives_trimming(
    tmp_path: Path, qwen_run: ChatRun
) -> None:
    system = "Du bist der Präsident des Bundestages."
    config = qwen_run.config.model_copy(
        update={
            "export": qwen_run.config.export.model_copy(
                update={
                    "ollama": qwen_run.config.export.ollama.model_copy(update={"system": system})
                }
            )
        }
    )
    model = load_hf(config)
    assert model.context_size == 256  # the tiny model's max_position_embeddings
    # Each line is ~60 tokens with its framing; with 8 reserved for the reply, 248 fit.
    lines = [f"Rede {i}: " + "Wir beraten heute den Haushalt. " * 6 for i in range(5)]

    session = talk(config, model, lines)

    assert "dropped the oldest" in session.status
    assert "the system prompt stays" in session.status
    assert all(len(prompt) <= 248 for prompt in session.prompts)
    last = qwen_run.tokenizer.decode(session.prompts[-1])
    assert last.startswith(f"<|im_start|>system\n{system}<|im_end|>")
    assert "Rede 0" not in last
    assert lines[-1] in last


def test_a_line_longer_than_the_context_is_not_sent_and_the_chat_goes_on(
    qwen_run: ChatRun,
) -> None:
    model = load_hf(qwen_run.config)

    session = talk(qwen_run.config, model, ["Haushalt " * 300, "Wer spricht?"])

    assert "not sent: this line makes a prompt of" in session.status
    assert session.prompts == [rendered(qwen_run.tokenizer, [user("Wer spricht?")])]


def forcing(model: LoadedModel, token: int, after: int) -> LoadedModel:
    """`model` whose replies are its own first `after` tokens, then `token` for certain."""

    def new_step() -> Step:
        inner = model.new_step()
        calls = 0

        def step(ids: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            logits = inner(ids)
            if calls > after:
                logits = torch.full_like(logits, float("-inf"))
                logits[:, token] = 0.0
            return logits

        return step

    return dataclasses.replace(model, new_step=new_step)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_chat_and_sample_stop_at_the_templates_end_of_turn(
    tmp_path: Path, tiny_models: TinyModels, family: Family
) -> None:
    settings: dict[str, TomlValue] = {"sample.sample.max_new_tokens": 20}
    run = chat_run(tmp_path, tiny_models, family, settings, trained=False)
    model = load_hf(run.config)
    end_of_turn = run.tokenizer.convert_tokens_to_ids([TURN_TOKENS[family][1]])[0]
    assert end_of_turn != run.tokenizer.eos_token_id
    assert end_of_turn in model.stop_ids
    # Three tokens of the model's own, then the end of the turn for certain.
    forced = forcing(model, end_of_turn, after=3)

    free_chat = talk(run.config, model, ["Wer spricht?"]).replies
    forced_chat = talk(run.config, forced, ["Wer spricht?"]).replies
    (free_sample,) = sample_texts(run.config, model)
    (forced_sample,) = sample_texts(run.config, forced)

    assert TURN_TOKENS[family][1] not in forced_chat
    assert free_chat.startswith(forced_chat.removesuffix("\n"))
    assert len(forced_chat) < len(free_chat)
    assert free_sample.startswith(forced_sample)
    assert len(forced_sample) < len(free_sample)


def interrupted_once(model: LoadedModel, at_call: int) -> LoadedModel:
    """`model` whose first reply meets a Ctrl-C at its `at_call`-th step."""
    interrupted = False

    def new_step() -> Step:
        inner = model.new_step()
        calls = 0

        def step(ids: Tensor) -> Tensor:
            nonlocal calls, interrupted
            calls += 1
            if calls == at_call and not interrupted:
                interrupted = True
                raise KeyboardInterrupt
            return inner(ids)

        return step

    return dataclasses.replace(model, new_step=new_step)


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on_with_it(qwen_run: ChatRun) -> None:
    model = load_hf(qwen_run.config)
    # The prefill, then three tokens; the Ctrl-C comes before a fourth.
    alone = talk(qwen_run.config, interrupted_once(model, at_call=4), ["Wer spricht?"])
    partial = alone.replies.removesuffix("\n")

    session = talk(
        qwen_run.config, interrupted_once(model, at_call=4), ["Wer spricht?", "Und dann?"]
    )

    assert "reply stopped" in session.status
    assert len(qwen_run.tokenizer.encode(partial, add_special_tokens=False)) <= 3
    history = [user("Wer spricht?"), {"role": "assistant", "content": partial}, user("Und dann?")]
    assert session.prompts[1] == rendered(qwen_run.tokenizer, history)
    assert session.replies.startswith(alone.replies)


# --- the from-scratch GPT: plain continuation ------------------------------------------------


def gpt_run(folder: Path, block_size: int, max_new_tokens: int) -> ExperimentConfig:
    config_path = saved_char_gpt(folder, block_size=block_size, max_new_tokens=max_new_tokens)
    return load_config(config_path, folder).config


def test_a_gpt_continues_the_transcript_each_line_on_a_new_line(tmp_path: Path) -> None:
    config = gpt_run(tmp_path, block_size=64, max_new_tokens=5)
    model = load_gpt(config)

    session = talk(config, model, ["romeo:", "juliet:"])

    # A char vocabulary has no end-of-text: each reply is max_new_tokens characters.
    assert len(session.replies) == 2 * (5 + 1)
    first = session.replies[:5]
    assert session.prompts[0] == model.encode("romeo:")
    transcript = "romeo:" + first
    transcript += "" if transcript.endswith("\n") else "\n"
    assert session.prompts[1] == model.encode(transcript + "juliet:")
    assert session.status.startswith("plain continuation (no chat template)")


def test_a_gpt_transcript_keeps_to_the_block_size_dropping_whole_old_turns(
    tmp_path: Path,
) -> None:
    config = gpt_run(tmp_path, block_size=32, max_new_tokens=4)
    model = load_gpt(config)
    lines = [f"line {letter}" for letter in "abcdefgh"]

    session = talk(config, model, lines)

    assert "outgrew the model's context of 32 tokens: dropped the oldest" in session.status
    assert all(len(prompt) <= 32 - 4 for prompt in session.prompts)
    last = model.decode(session.prompts[-1])
    assert last.startswith("line ")  # a whole turn first, not the tail of one
    assert last.endswith("line h")
    assert "line a" not in last
