"""A `messages` chat fine-tune exported through llama.cpp's real converter.

The base is the tiny GPT-2-BPE Llama of tests/llama_cpp_helpers.py made a chat model:
ChatML's turn tokens added as special tokens and Qwen2.5's released chat template. A few
LoRA steps on a small JSONL of conversations, then `ml-playground export` runs
convert_hf_to_gguf.py (fetched by `make llama-cpp-converters`; without it the test fails,
saying so). What is judged: gguf's GGUFReader reads the GGUF and finds the chat template
in it, and the Modelfile's TEMPLATE, executed by Go's text/template as Ollama executes it,
renders conversations to the very text the tokenizer's chat template gives. With
llama.cpp's binaries built (`make llama-cpp`), llama-completion also continues that text
greedily as the merged model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import gguf
import pytest
import torch

from ml_playground.data.chat_records import prepare_chat_dataset
from ml_playground.data.rendering import ChatTokenizer
from ml_playground.finetune.hub import ModelSource, load_causal_lm, load_tokenizer
from ml_playground.finetune.model import load_adapters, merge_adapters
from ml_playground.train.hf import train_lora
from tests.experiments import chat_settings, load
from tests.finetune_helpers import (
    QWEN25_TEMPLATE,
    TURN_TOKENS,
    add_chat_turns,
    conversation,
    write_jsonl,
)
from tests.go_helpers import render_in_go
from tests.integration.test_export_chat import modelfile_template
from tests.llama_cpp_helpers import (
    TOOLS,
    build_gpt2_llama,
    export_cli,
    llama_completion,
    require_converters,
)

IM_START, IM_END = TURN_TOKENS["qwen2"]
TWO_TURNS = [
    {"role": "user", "content": "Wer hat das Wort?"},
    {"role": "assistant", "content": "Herr Kollege, Sie haben das Wort."},
    {"role": "user", "content": "Und dann?"},
]
WITH_SYSTEM = [{"role": "system", "content": "Antworte knapp."}, *TWO_TURNS]
GREEDY_STEPS = 6


@dataclass(frozen=True)
class ChatExport:
    model: Path  # the base, as the hub would give it
    out_dir: Path  # the fine-tune's out/
    export_dir: Path


def chat_fine_tune(folder: Path) -> ChatExport:
    """The GPT-2-BPE Llama as a ChatML chat model, fine-tuned for a few LoRA steps on
    eight conversations in `folder` (f32 throughout, so the export is f32)."""
    model = add_chat_turns(
        build_gpt2_llama(folder / "hub" / "tiny-llama-chat"), (IM_START, IM_END), QWEN25_TEMPLATE
    )
    chats = [conversation(f"Wer spricht, Nummer {i}?", f"Herr Kollege {i}.") for i in range(8)]
    write_jsonl(folder / "chats.jsonl", chats)
    settings = chat_settings(model) | {
        "train.runtime.max_iters": 3,
        "export.ollama.enabled": True,
        "export.ollama.quant": "f32",
    }
    loaded = load(folder, settings)
    prepare_chat_dataset(loaded.config, lambda: load_tokenizer(ModelSource.local(model)))
    train_lora(loaded.config)
    return ChatExport(model, loaded.config.train.runtime.out_dir, folder / "export")


def greedy_ids(model: torch.nn.Module, ids: list[int], steps: int) -> list[int]:
    sequence = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = cast(torch.Tensor, model(torch.tensor([sequence])).logits)
            sequence.append(int(logits[0, -1].argmax()))
    return sequence[len(ids) :]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ChatExport:
    """The fine-tune, exported through the CLI."""
    require_converters()
    folder = tmp_path_factory.mktemp("chat-gguf")
    run = chat_fine_tune(folder)
    result = export_cli(folder, folder)
    assert "INFO:hf-to-gguf:Model successfully exported" in result.stderr
    return run


def trained_tokenizer(run: ChatExport) -> ChatTokenizer:
    return cast(ChatTokenizer, load_tokenizer(ModelSource.local(run.out_dir / "tokenizer")))


def test_a_chat_fine_tune_exported_by_llama_cpp_renders_conversations_as_its_tokenizer(
    exported: ChatExport, go_renderer: Path
) -> None:
    export_dir = exported.export_dir

    reader = gguf.GGUFReader(export_dir / "model.gguf")
    assert bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode() == QWEN25_TEMPLATE
    file_type = int(reader.fields["general.file_type"].parts[-1][0])
    assert file_type == gguf.LlamaFileType.ALL_F32
    tokenizer = trained_tokenizer(exported)
    modelfile = (export_dir / "Modelfile").read_text(encoding="utf-8")
    template = modelfile_template(modelfile)
    for messages in (TWO_TURNS, WITH_SYSTEM):
        ours = render_in_go(go_renderer, {"template": template, "messages": messages})
        theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours == theirs
    # Equal text is equal tokens only if neither side adds a BOS: the template writes none,
    # the tokenizer adds none, and the GGUF asks llama.cpp for none (absent, its default
    # for GPT-2's BPE is none: the greedy test below runs llama.cpp on the rendered text).
    assert tokenizer.encode("Hallo") == tokenizer.encode("Hallo", add_special_tokens=False)
    add_bos = reader.fields.get("tokenizer.ggml.add_bos_token")
    assert add_bos is None or not bool(add_bos.parts[-1][0])
    stops = [line for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == [f'PARAMETER stop "{IM_END}"', f'PARAMETER stop "{tokenizer.eos_token}"']


def test_llama_cpp_continues_a_rendered_conversation_greedily_like_the_merged_model(
    exported: ChatExport, go_renderer: Path
) -> None:
    if not (TOOLS / "bin" / "llama-completion").is_file():
        pytest.skip(f"llama-completion is not built in {TOOLS / 'bin'}: run `make llama-cpp`")
    export_dir = exported.export_dir
    tokenizer = trained_tokenizer(exported)
    template = modelfile_template((export_dir / "Modelfile").read_text(encoding="utf-8"))
    prompt = render_in_go(go_renderer, {"template": template, "messages": WITH_SYSTEM})
    base = load_causal_lm(
        ModelSource.local(exported.model),
        dtype=torch.float32,
        attn_implementation=None,
    )
    adapters = exported.out_dir / "adapters" / "best"
    merged = merge_adapters(load_adapters(base, adapters, trainable=False))
    expected = greedy_ids(merged, tokenizer.encode(prompt, add_special_tokens=False), GREEDY_STEPS)
    # A turn token would end llama.cpp's run early and vanish from the decoded text.
    assert not set(expected) & set(tokenizer.all_special_ids)

    text = llama_completion(export_dir / "model.gguf", prompt, GREEDY_STEPS)

    assert text == tokenizer.decode(expected).rstrip("\n")
