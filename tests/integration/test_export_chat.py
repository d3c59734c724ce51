"""A chat fine-tune, prepared, trained and exported: Ollama sees conversations as training did.

The converter is a stand-in (no llama.cpp in CI) that writes a file where the GGUF would
be; what is checked is the Modelfile, whose TEMPLATE Go's own text/template executes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from ml_playground.backends import backend_for
from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.export import export_experiment
from ml_playground.finetune.hub import ModelSource, load_tokenizer
from ml_playground.train.hf import train_lora
from tests.experiments import chat_settings, load
from tests.finetune_helpers import (
    GEMMA3_TEMPLATE,
    QWEN25_TEMPLATE,
    Family,
    TinyModels,
    build_chat_model,
    conversation,
    write_jsonl,
)
from tests.go_helpers import render_in_go

CONVERTER = """\
import sys
args = sys.argv[1:]
with open(args[args.index("--outfile") + 1], "wb") as out:
    out.write(b"GGUF")
"""
ASKED = [
    {"role": "system", "content": "Antworte knapp."},
    {"role": "user", "content": "Wer hat das Wort?"},
    {"role": "assistant", "content": "Herr Kollege, Sie haben das Wort."},
    {"role": "user", "content": "Und dann?"},
]


def modelfile_template(modelfile: str) -> str:
    """The TEMPLATE as Ollama's parser reads it: up to the closing triple quote."""
    opened = modelfile.index('TEMPLATE """') + len('TEMPLATE """')
    return modelfile[opened : modelfile.index('"""\n', opened)]


# The family, its released chat template, and the text that ends the assistant's turn.
CASES: dict[str, tuple[Family, str, str]] = {
    "qwen2.5": ("qwen2", QWEN25_TEMPLATE, "<|im_end|>"),
    "gemma3": ("gemma3", GEMMA3_TEMPLATE, "<end_of_turn>"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_exported_chat_fine_tune_renders_conversations_as_its_training_did(
    tmp_path: Path, tiny_models: TinyModels, go_renderer: Path, case: str
) -> None:
    family, template, stop = CASES[case]
    model = build_chat_model(tmp_path / "model", tiny_models, family, template)
    chats = [conversation(f"Wer spricht, Nummer {i}?", f"Kollege {i}.") for i in range(8)]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text(CONVERTER, encoding="utf-8")
    settings = chat_settings(model) | {
        "export.ollama.enabled": True,
        "export.ollama.convert_bin": str(converter),
        "train.runtime.max_iters": 2,
    }
    config = load(tmp_path, settings).config
    prepare_chat_dataset(config, lambda: load_tokenizer(ModelSource.local(model)))
    train_lora(config)

    export_experiment(config, backend_for(config), "chat")

    out_dir = config.train.runtime.out_dir
    assert json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))["source_format"] == (
        "messages"
    )
    modelfile = (tmp_path / "export" / "Modelfile").read_text(encoding="utf-8")
    ours = render_in_go(go_renderer, {"template": modelfile_template(modelfile), "messages": ASKED})
    tokenizer = cast(ChatTokenizer, load_tokenizer(ModelSource.local(out_dir / "tokenizer")))
    trained_text = tokenizer.apply_chat_template(ASKED, tokenize=False, add_generation_prompt=True)
    assert isinstance(trained_text, str)
    # What the model is given under Ollama (llama.cpp adding BOS where the tokenizer does)
    # are the tokens it was fine-tuned on.
    assert tokenizer.encode(ours, add_special_tokens=True) == tokenizer.encode(
        trained_text, add_special_tokens=False
    )
    stops = [line for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == [f'PARAMETER stop "{stop}"', f'PARAMETER stop "{tokenizer.eos_token}"']
    readme = (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    assert "chat template" in readme
