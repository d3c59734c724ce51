"""A chat template's shape, read off what it renders; what no shape describes is refused."""

from __future__ import annotations

import pytest

from ml_playground.errors import ExportError
from ml_playground.export.chat_template import (
    TemplateTokenizer,
    derive_shape,
    ollama_chat,
)
from ml_playground.export.modelfile import Modelfile, SamplingDefaults
from tests.finetune_helpers import GEMMA3_TEMPLATE, QWEN25_TEMPLATE, Family, chat_tokenizer

# Turn numbers in the text: no fixed opening per role, so no Go template without counting.
NUMBERED_TURNS = (
    "{%- for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] }}\n"
    "{%- endfor %}{%- if add_generation_prompt %}assistant:{%- endif %}"
)
# A template that leaves a system message out: Ollama's system prompt would have no place.
NO_SYSTEM = (
    "{%- for m in messages if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def tokenizer(family: Family, template: str) -> TemplateTokenizer:
    return chat_tokenizer(family, template)


def test_qwen25_reads_as_chatml_turns_after_its_default_system_turn() -> None:
    shape = derive_shape(tokenizer("qwen2", QWEN25_TEMPLATE))

    assert (shape.user_open, shape.user_close) == ("<|im_start|>user\n", "<|im_end|>\n")
    assert shape.assistant_open == shape.generation == "<|im_start|>assistant\n"
    assert shape.assistant_close == "<|im_end|>\n"
    assert (shape.opening, shape.system_close) == ("<|im_start|>system\n", "<|im_end|>\n")
    assert shape.default_system == (
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    )
    assert shape.system_separator is None


def test_gemma3_reads_as_model_turns_with_the_system_prompt_opening_the_first_user_turn() -> None:
    shape = derive_shape(tokenizer("gemma3", GEMMA3_TEMPLATE))

    assert shape.opening == "<bos>"
    assert shape.user_open == "<start_of_turn>user\n"
    assert shape.assistant_open == shape.generation == "<start_of_turn>model\n"
    assert shape.user_close == shape.assistant_close == "<end_of_turn>\n"
    assert shape.system_separator == "\n\n"
    assert shape.default_system is None


def test_the_bos_llama_cpp_adds_is_not_written_again_by_the_template() -> None:
    gemma = ollama_chat(tokenizer("gemma3", GEMMA3_TEMPLATE), "google/gemma-3-1b-it")

    assert "<bos>" not in gemma.template
    assert gemma.template.startswith("{{ if .Messages }}")


@pytest.mark.parametrize(
    ("family", "template", "stop"),
    [("qwen2", QWEN25_TEMPLATE, "<|im_end|>"), ("gemma3", GEMMA3_TEMPLATE, "<end_of_turn>")],
)
def test_the_end_of_the_assistants_turn_stops_generation(
    family: Family, template: str, stop: str
) -> None:
    assert ollama_chat(tokenizer(family, template), "model").stops == (stop,)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (NUMBERED_TURNS, "the first user turn does not open as later user turns do"),
        (NO_SYSTEM, "it does not write a system message once, verbatim"),
    ],
    ids=["numbered-turns", "drops-the-system-prompt"],
)
def test_a_template_no_shape_describes_is_refused_naming_the_model_and_the_override(
    template: str, reason: str
) -> None:
    with pytest.raises(ExportError) as refused:
        ollama_chat(tokenizer("qwen2", template), "acme/odd-chat")

    message = str(refused.value)
    assert "acme/odd-chat" in message
    assert reason in message
    assert "[export.ollama] template" in message
    assert "\n" not in message


def test_the_chat_modelfile_carries_the_template_verbatim_and_the_stops() -> None:
    chat = ollama_chat(tokenizer("qwen2", QWEN25_TEMPLATE), "Qwen/Qwen2.5-0.5B-Instruct")
    modelfile = Modelfile(
        weights="./model.gguf",
        template=chat.template,
        sampling=SamplingDefaults(temperature=0.7, top_k=40, top_p=0.9),
        stops=[*chat.stops, "<|im_end|>", "<|endoftext|>"],
    ).render()

    # The template holds quotes and newlines, so it is triple-quoted; Ollama reads it back
    # up to the first closing triple quote.
    opened = modelfile.index('TEMPLATE """') + len('TEMPLATE """')
    assert modelfile[opened : modelfile.index('"""\n', opened)] == chat.template
    stops = [line for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"']
