"""The Modelfile TEMPLATE of a chat fine-tune, executed by Go's own text/template.

The `go_renderer` fixture (tests/go_helpers.py) renders a template with the data Ollama
gives it. Its output must equal what the tokenizer's chat template renders, character for
character, so that Ollama shows a fine-tuned model conversations exactly as it learned them:
for the released Qwen2.5 and Gemma 3 templates, and for two ChatML variants that take the
other ways through the translation (no default system prompt; template text holding `{{`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from ml_playground.export.chat_template import TemplateTokenizer, ollama_chat, runtime_bos
from tests.finetune_helpers import GEMMA3_TEMPLATE, QWEN25_TEMPLATE, Family, chat_tokenizer
from tests.go_helpers import render_in_go

Message = dict[str, str]
SYSTEM = {"role": "system", "content": "Antworte knapp, auf Deutsch."}
# Two turns whose contents carry what a template could mangle: line breaks, quotes, braces.
TWO_TURNS: list[Message] = [
    {"role": "user", "content": "Wer hat das Wort?\nBitte nur den Namen."},
    {"role": "assistant", "content": 'Herr Kollege, Sie haben das "Wort".'},
    {"role": "user", "content": "Und {{ .System }} danach?"},
]


def chatml(default_system: str | None) -> str:
    """ChatML turns; a system turn with `default_system` when none is given (None: none)."""
    default = (
        "{%- if messages[0]['role'] != 'system' %}"
        f"{{{{- '<|im_start|>system\\n{default_system}<|im_end|>\\n' }}}}"
        "{%- endif %}"
        if default_system is not None
        else ""
    )
    return (
        default + "{%- for m in messages %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


CASES: dict[str, tuple[Family, str]] = {
    "qwen2.5": ("qwen2", QWEN25_TEMPLATE),
    "gemma3": ("gemma3", GEMMA3_TEMPLATE),
    "chatml-without-default-system": ("qwen2", chatml(None)),
    "chatml-default-system-with-braces": ("qwen2", chatml('Antworte als {{\\"json\\"}}.')),
}


def tokenizer_of(case: str) -> TemplateTokenizer:
    family, template = CASES[case]
    return chat_tokenizer(family, template)


def rendered_by_tokenizer(
    tokenizer: TemplateTokenizer, conversation: Sequence[Message], **options: bool
) -> str:
    text: object = tokenizer.apply_chat_template(list(conversation), tokenize=False, **options)
    assert isinstance(text, str)
    return text


def runtime_prefix(tokenizer: TemplateTokenizer) -> str:
    """What llama.cpp puts in front of the template's text: BOS, when the tokenizer adds it."""
    return runtime_bos(tokenizer) or ""


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("system", [True, False], ids=["with-system", "without-system"])
def test_two_turns_render_in_go_exactly_as_the_tokenizers_chat_template(
    go_renderer: Path, case: str, system: bool
) -> None:
    tokenizer = tokenizer_of(case)
    chat = ollama_chat(tokenizer, case)
    conversation = [SYSTEM, *TWO_TURNS] if system else TWO_TURNS

    ours = render_in_go(go_renderer, {"template": chat.template, "messages": conversation})

    expected = rendered_by_tokenizer(tokenizer, conversation, add_generation_prompt=True)
    assert runtime_prefix(tokenizer) + ours == expected
    # What the model sees: the runtime's BOS (if any) and the tokens of the text.
    runtime_ids = tokenizer.encode(ours, add_special_tokens=True)
    assert runtime_ids == tokenizer.encode(expected, add_special_tokens=False)


def test_gemma_bos_is_left_to_the_runtime_so_the_model_sees_it_once(go_renderer: Path) -> None:
    tokenizer = tokenizer_of("gemma3")
    chat = ollama_chat(tokenizer, "tiny-gemma3")

    ours = render_in_go(go_renderer, {"template": chat.template, "messages": TWO_TURNS})

    bos_id = tokenizer.bos_token_id
    assert bos_id is not None
    assert tokenizer.encode(ours, add_special_tokens=True).count(bos_id) == 1


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("system", [True, False], ids=["with-system", "without-system"])
def test_the_one_turn_form_of_older_ollama_renders_as_the_tokenizer_does(
    go_renderer: Path, case: str, system: bool
) -> None:
    tokenizer = tokenizer_of(case)
    chat = ollama_chat(tokenizer, case)
    question = TWO_TURNS[0]

    ours = render_in_go(
        go_renderer,
        {
            "template": chat.template,
            "system": SYSTEM["content"] if system else "",
            "prompt": question["content"],
        },
    )

    conversation = [SYSTEM, question] if system else [question]
    expected = rendered_by_tokenizer(tokenizer, conversation, add_generation_prompt=True)
    assert runtime_prefix(tokenizer) + ours == expected


@pytest.mark.parametrize("case", CASES)
def test_a_final_assistant_message_stays_open_for_the_model_to_continue(
    go_renderer: Path, case: str
) -> None:
    tokenizer = tokenizer_of(case)
    chat = ollama_chat(tokenizer, case)
    conversation = [SYSTEM, *TWO_TURNS[:2]]

    ours = render_in_go(go_renderer, {"template": chat.template, "messages": conversation})

    expected = rendered_by_tokenizer(tokenizer, conversation, continue_final_message=True)
    assert runtime_prefix(tokenizer) + ours == expected
