"""Ollama Modelfiles: what they say, and strings quoted so Ollama's parser reads them back."""

from __future__ import annotations

import pytest

from ml_playground.errors import ExportError
from ml_playground.export.modelfile import (
    RAW_COMPLETION,
    Modelfile,
    SamplingDefaults,
    quote,
    raw_completion_template,
)

SAMPLING = SamplingDefaults(temperature=0.8, top_k=200, top_p=0.95)


def test_raw_completion_modelfile_for_a_from_scratch_gpt() -> None:
    modelfile = Modelfile(
        weights="./model.gguf",
        template=raw_completion_template(None),
        sampling=SAMPLING,
        stops=["<|endoftext|>"],
        context_length=64,
    )

    assert modelfile.render() == (
        "FROM ./model.gguf\n"
        'TEMPLATE "{{ .Prompt }}"\n'
        'PARAMETER stop "<|endoftext|>"\n'
        "PARAMETER temperature 0.8\n"
        "PARAMETER top_k 200\n"
        "PARAMETER top_p 0.95\n"
        "PARAMETER num_ctx 64\n"
    )


def test_adapter_system_prompt_and_repeated_stops() -> None:
    modelfile = Modelfile(
        weights="./base.gguf",
        adapter="./adapter.gguf",
        template=raw_completion_template("Du bist ein Redner."),
        system="Du bist ein Redner.",
        sampling=SamplingDefaults(temperature=0.0, top_k=0, top_p=1.0),
        stops=["<SPEECH_END>", "<eos>", "<SPEECH_END>", ""],
    )

    lines = modelfile.render().splitlines()

    assert lines[:2] == ["FROM ./base.gguf", "ADAPTER ./adapter.gguf"]
    assert 'SYSTEM "Du bist ein Redner."' in lines
    assert [line for line in lines if "stop" in line] == [
        'PARAMETER stop "<SPEECH_END>"',
        'PARAMETER stop "<eos>"',
    ]
    assert "PARAMETER temperature 0" in lines
    assert not any("num_ctx" in line for line in lines)
    assert raw_completion_template(None) == RAW_COMPLETION


def test_without_a_template_ollama_uses_the_chat_template_in_the_gguf() -> None:
    modelfile = Modelfile(weights="./model.gguf", template=None, sampling=SAMPLING)

    assert not any(line.startswith("TEMPLATE") for line in modelfile.render().splitlines())


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("<|endoftext|>", '"<|endoftext|>"'),
        ("two words", '"two words"'),
        ("C:\\path", '"C:\\path"'),  # Ollama has no escapes: a backslash is itself
        ('say "hi"', '"""say "hi""""'),
        ("Sprecher: {{ .Prompt }}\n\n", '"""Sprecher: {{ .Prompt }}\n\n"""'),
    ],
)
def test_quote_picks_a_form_ollama_reads_back_unchanged(value: str, written: str) -> None:
    assert quote(value) == written


@pytest.mark.parametrize("value", ['a """ b', "bell\a"])
def test_quote_refuses_what_ollama_cannot_read_back(value: str) -> None:
    with pytest.raises(ExportError, match="Modelfile"):
        quote(value)
