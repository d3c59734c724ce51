"""Writing a tiny GPT as GGUF and judging the file with tools we did not write.

gguf's own `GGUFReader` reads a file back; transformers' GGUF loader turns it into its own
model and tokenizer, whose logits, greedy continuation and text splitting the tests compare
with ours. The vocabulary is GPT-2's BPE cut to its first 600 ranks, which keeps each load
to seconds.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import gguf
import tiktoken
import torch

from ml_playground.config import SampleSettings
from ml_playground.export.bpe_vocab import ByteLevelVocab, build_vocab
from ml_playground.export.gguf_gpt import write_gpt_gguf
from ml_playground.export.llama_cpp import NativeQuant
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.sample.generate import generate
from ml_playground.sample.gpt import gpt_step
from tests.export_helpers import EOT, random_gpt

N_RANKS = 600
PROMPT = "ROMEO: But soft, what light through yonder window breaks?"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:  Speak, speak!  2024"
GREEDY_TOKENS = 12


def tiny_vocab(encoding: tiktoken.Encoding) -> ByteLevelVocab:
    ranks = {encoding.decode_single_token_bytes(rank): rank for rank in range(N_RANKS)}
    return build_vocab(ranks, {N_RANKS: EOT}, eos_id=N_RANKS)


def export(folder: Path, model: GPT, encoding: tiktoken.Encoding, quant: NativeQuant) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.gguf"
    write_gpt_gguf(
        path, model.state_dict(), model.config, tiny_vocab(encoding), quant=quant, model_name="t"
    )
    return path


def unit_scale_gpt(config: GPTConfig, seed: int) -> GPT:
    """A random GPT whose next token depends on the whole context, not just the last one.

    At GPT-2's init (std 0.02) attention is nearly uniform, so a query or key row written
    to the wrong place barely moves the logits, and a tied head mostly predicts the input
    token again. Here every matrix keeps unit-scale activations (std 1/sqrt(fan_in)) and
    the token embedding is small beside what the blocks add.
    """
    model = random_gpt(config, seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                std = 0.1 if name == "transformer.wte.weight" else 1 / math.sqrt(param.shape[1])
                param.normal_(0.0, std)
    return model


class TextTokenizer(Protocol):
    """The part of a transformers tokenizer these tests use."""

    eos_token: str

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def load_with_transformers(path: Path, **config: int) -> torch.nn.Module:
    """transformers' model from the file; `config` sets what its GGUF reader does not read."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - slow import, these tests only

    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **config
    )
    return model.eval()


def transformers_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        output = model(torch.tensor([ids]))
    return cast(torch.Tensor, output.logits)[0]


def our_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(torch.tensor([ids]))
    return logits[0, :, : model.config.vocab_size]


def max_logit_difference(ours: GPT, theirs: torch.nn.Module, ids: list[int]) -> float:
    difference = (our_logits(ours, ids) - transformers_logits(theirs, ids)).abs().max().item()
    print(f"max |logit difference| = {difference:.3g}")
    return difference


def our_greedy(model: GPT, ids: list[int], steps: int = GREEDY_TOKENS) -> list[int]:
    """Our sampler's greedy continuation, through the KV cache."""
    settings = SampleSettings(temperature=0.0, max_new_tokens=steps)
    [continuation] = generate(gpt_step(model), ids, settings)
    return continuation.ids


def their_greedy(model: torch.nn.Module, ids: list[int], steps: int = GREEDY_TOKENS) -> list[int]:
    """Greedy decoding with transformers' model, the whole context each step."""
    context = list(ids)
    for _ in range(steps):
        context.append(int(transformers_logits(model, context)[-1].argmax()))
    return context[len(ids) :]


def read_field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"{key} missing"
    return field.contents()


def tensor_shapes(reader: gguf.GGUFReader) -> dict[str, tuple[int, ...]]:
    return {tensor.name: tuple(int(n) for n in tensor.data.shape) for tensor in reader.tensors}


def assert_tokenizer_splits_like_tiktoken(path: Path, encoding: tiktoken.Encoding) -> None:
    """transformers' tokenizer, built from the file's metadata, splits text as training did."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - slow import, these tests only

    tokenizer = cast(
        TextTokenizer,
        AutoTokenizer.from_pretrained(  # pyright: ignore[reportUnknownMemberType] - untyped
            str(path.parent), gguf_file=path.name
        ),
    )

    for text in (TEXT, PROMPT, "naïve café, ünïcödé: 😀 and\ttabs\r\n"):
        assert tokenizer.encode(text, add_special_tokens=False) == encoding.encode_ordinary(text)
    ids = encoding.encode_ordinary(TEXT)
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.eos_token == EOT


@contextmanager
def one_torch_thread() -> Generator[None]:
    """Tiny matmuls are fastest and bit-stable on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
