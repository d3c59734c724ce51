"""What a llama.cpp architecture supplies to the GGUF writer: its name, tensors and keys.

Each target architecture is one `GGUFArch` value (`gguf_gpt2.py`, `gguf_llama.py`);
`gguf_gpt.py` writes the keys every architecture shares, the tokenizer and the tensors.
llama.cpp stores a matrix with ggml's dimension order {in, out}, which in numpy's row-major
order is (out, in): exactly `nn.Linear.weight`, so nothing is transposed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import gguf
import numpy as np
import numpy.typing as npt
import torch

from ml_playground.model.config import GPTConfig

Float32Array = npt.NDArray[np.float32]
StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as GGUF will hold it: its name and float32 values in numpy layout."""

    name: str
    values: Float32Array


@dataclass(frozen=True)
class GGUFArch:
    """A llama.cpp architecture: the tensors it loads and the keys only it reads.

    `tensors(state, config, n_tokens)` yields every tensor from a GPT state dict, in
    float32; `hyperparameters(writer, config)` adds the `<arch>.*` keys beyond those all
    architectures share (context, widths, depth, heads, vocabulary size).
    """

    kind: gguf.MODEL_ARCH
    tensors: Callable[[StateDict, GPTConfig, int], Iterator[GGUFTensor]]
    hyperparameters: Callable[[gguf.GGUFWriter, GPTConfig], None]

    @property
    def name(self) -> str:
        """llama.cpp's name for it, `general.architecture`."""
        return gguf.MODEL_ARCH_NAMES[self.kind]


def tensor_name(kind: gguf.MODEL_TENSOR, suffix: str, block: int | None = None) -> str:
    """llama.cpp's name for a tensor, e.g. `blk.0.attn_qkv.weight`, from gguf's own table."""
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=block) if block is not None else base}.{suffix}"


def float32(state: StateDict, key: str) -> Float32Array:
    array: Float32Array = state[key].detach().to(torch.float32).cpu().numpy()
    return array


def vocabulary_tensors(state: StateDict, config: GPTConfig, n_tokens: int) -> Iterator[GGUFTensor]:
    """The token embedding and, when the model does not tie it, the output head.

    Both are padded to a multiple of 64 rows for speed; the extra rows are no tokens, so
    they are dropped (kept, llama.cpp would sample them: it cannot mask them as we do). A
    tied head is not written: llama.cpp reuses `token_embd` when there is no `output`.
    """
    embedding = float32(state, "transformer.wte.weight")[:n_tokens]
    yield GGUFTensor(tensor_name(gguf.MODEL_TENSOR.TOKEN_EMBD, "weight"), embedding)
    if not config.tie_embeddings:
        head = float32(state, "lm_head.weight")[:n_tokens]
        yield GGUFTensor(tensor_name(gguf.MODEL_TENSOR.OUTPUT, "weight"), head)
