"""The Modelfile TEMPLATE of a chat fine-tune, executed by Go's own text/template.

tests/go/render_template is a small Go program that renders a template with the data
Ollama gives it; it is built once per session. Its output must equal what the tokenizer's
chat template renders, character for character, so that Ollama shows a fine-tuned model
conversations exactly as it learned them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from ml_playground.export.chat_template import TemplateTokenizer, ollama_chat, runtime_bos
from tests.conftest import TESTS_DIR
from tests.finetune_helpers import GEMMA3_TEMPLATE, QWEN25_TEMPLATE, Family, chat_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

GO_PROGRAM = TESTS_DIR / "go" / "render_template"
INSTALL_GO = "command -v go || (apt-get update && apt-get install -y golang-go)"

Message = dict[str, str]
SYSTEM = {"role": "system", "content": "Antworte knapp, auf Deutsch."}
# Two turns whose contents carry what a template could mangle: line breaks, quotes, braces.
TWO_TURNS: list[Message] = [
    {"role": "user", "content": "Wer hat das Wort?\nBitte nur den Namen."},
    {"role": "assistant", "content": 'Herr Kollege, Sie haben das "Wort".'},
    {"role": "user", "content": "Und {{ .System }} danach?"},
]
TEMPLATES = {"qwen2": QWEN25_TEMPLATE, "gemma3": GEMMA3_TEMPLATE}


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The render_template program, built with the installed Go toolchain."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is not installed, and these tests execute Modelfile templates with Go's own"
            f" text/template; install it: {INSTALL_GO}"
        )
    binary = tmp_path_factory.mktemp("go") / "render_template"
    # Go 1.21+ could try to download a newer toolchain for a go.mod; only the local one runs.
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=GO_PROGRAM,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


def render_in_go(renderer: Path, request: dict[str, object]) -> str:
    done = subprocess.run(
        [str(renderer)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def tokenizer_of(family: Family) -> PreTrainedTokenizerFast:
    return chat_tokenizer(family, TEMPLATES[family])


def rendered_by_tokenizer(
    tokenizer: PreTrainedTokenizerFast, conversation: Sequence[Message], **options: bool
) -> str:
    text = tokenizer.apply_chat_template(list(conversation), tokenize=False, **options)  # pyright: ignore[reportUnknownMemberType] - untyped library
    assert isinstance(text, str)
    return text


def runtime_prefix(tokenizer: PreTrainedTokenizerFast) -> str:
    """What llama.cpp puts in front of the template's text: BOS, when the tokenizer adds it."""
    return runtime_bos(cast(TemplateTokenizer, tokenizer)) or ""


@pytest.mark.parametrize("family", ["qwen2", "gemma3"], ids=["qwen2.5", "gemma3"])
@pytest.mark.parametrize("system", [True, False], ids=["with-system", "without-system"])
def test_two_turns_render_in_go_exactly_as_the_tokenizers_chat_template(
    go_renderer: Path, family: Family, system: bool
) -> None:
    tokenizer = tokenizer_of(family)
    chat = ollama_chat(cast(TemplateTokenizer, tokenizer), f"tiny-{family}")
    conversation = [SYSTEM, *TWO_TURNS] if system else TWO_TURNS

    ours = render_in_go(go_renderer, {"template": chat.template, "messages": conversation})

    expected = rendered_by_tokenizer(tokenizer, conversation, add_generation_prompt=True)
    assert runtime_prefix(tokenizer) + ours == expected
    # What the model sees: the runtime's BOS (if any) and the tokens of the text.
    runtime_ids = tokenizer.encode(ours, add_special_tokens=True)
    assert runtime_ids == tokenizer.encode(expected, add_special_tokens=False)


def test_gemma_bos_is_left_to_the_runtime_so_the_model_sees_it_once(go_renderer: Path) -> None:
    tokenizer = tokenizer_of("gemma3")
    chat = ollama_chat(cast(TemplateTokenizer, tokenizer), "tiny-gemma3")

    ours = render_in_go(go_renderer, {"template": chat.template, "messages": TWO_TURNS})

    bos_id = tokenizer.bos_token_id
    assert bos_id is not None
    assert tokenizer.encode(ours, add_special_tokens=True).count(bos_id) == 1


@pytest.mark.parametrize("family", ["qwen2", "gemma3"], ids=["qwen2.5", "gemma3"])
@pytest.mark.parametrize("system", [True, False], ids=["with-system", "without-system"])
def test_the_one_turn_form_of_older_ollama_renders_as_the_tokenizer_does(
    go_renderer: Path, family: Family, system: bool
) -> None:
    tokenizer = tokenizer_of(family)
    chat = ollama_chat(cast(TemplateTokenizer, tokenizer), f"tiny-{family}")
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


@pytest.mark.parametrize("family", ["qwen2", "gemma3"], ids=["qwen2.5", "gemma3"])
def test_a_final_assistant_message_stays_open_for_the_model_to_continue(
    go_renderer: Path, family: Family
) -> None:
    tokenizer = tokenizer_of(family)
    chat = ollama_chat(cast(TemplateTokenizer, tokenizer), f"tiny-{family}")
    conversation = [SYSTEM, *TWO_TURNS[:2]]

    ours = render_in_go(go_renderer, {"template": chat.template, "messages": conversation})

    expected = rendered_by_tokenizer(tokenizer, conversation, continue_final_message=True)
    assert runtime_prefix(tokenizer) + ours == expected
