"""The shape of a from-scratch GPT: its checkpoint's `model_args`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, model_validator

from ml_playground.artifacts import Artifact, parse_artifact
from ml_playground.config import Arch
from ml_playground.errors import CheckpointError

# Matmuls over a vocabulary padded to a multiple of 64 map onto faster GPU kernels.
VOCAB_PAD_MULTIPLE = 64
# GPT-2's LayerNorm epsilon and Llama's RMSNorm epsilon; the GGUF exporter writes the same
# value into the file's metadata.
NORM_EPS = 1e-5
# The SwiGLU hidden width is rounded up to a multiple of this, for efficient matmuls.
HIDDEN_MULTIPLE = 64
# Until 1.0 a checkpoint of another format is refused, not converted (DEVELOPMENT.md).
OLDER_CHECKPOINT = (
    "it was not written by this version of ml-playground; start a new run with"
    " `ml-playground train <experiment> --fresh`"
)

Size = Annotated[int, Field(ge=1)]


class GPTConfig(Artifact):
    """Shape of a GPT. `gpt2` ignores the rotary, QK-norm and key/value head settings."""

    vocab_size: Size
    block_size: Size
    n_layer: Size
    n_head: Size
    n_embd: Size
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    bias: bool = False
    arch: Arch = "gpt2"
    rope_base: Annotated[float, Field(gt=1.0)] = 10000.0
    mlp_hidden: Size | None = None
    tie_embeddings: bool = True
    qk_norm: bool = False
    n_kv_head: Size | None = None

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> GPTConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")
        if self.arch == "llama":
            if self.head_dim % 2 != 0:
                raise ValueError(
                    f"n_embd / n_head = {self.head_dim} must be even: rotary embeddings rotate "
                    "pairs of values"
                )
            if self.n_head % self.kv_heads != 0:
                raise ValueError(
                    f"n_head = {self.n_head} must be a multiple of n_kv_head = {self.kv_heads}"
                )
            if self.bias:
                raise ValueError("arch = 'llama' has no biases; remove bias = true")
        return self

    @property
    def padded_vocab_size(self) -> int:
        """`vocab_size` rounded up to a multiple of 64; the extra ids are never sampled."""
        multiples = -(-self.vocab_size // VOCAB_PAD_MULTIPLE)
        return multiples * VOCAB_PAD_MULTIPLE

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head for llama if set, else one per query head."""
        if self.arch == "llama" and self.n_kv_head is not None:
            return self.n_kv_head
        return self.n_head

    @property
    def hidden_size(self) -> int:
        """The MLP's inner width: mlp_hidden if set, else the architecture's default.

        GPT-2 uses 4 * n_embd. A gated MLP has three matrices instead of two, so Llama
        uses 2/3 of that, 8/3 * n_embd, to keep the parameter count (rounded up here).
        """
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.arch == "gpt2":
            return 4 * self.n_embd
        return -(-8 * self.n_embd // (3 * HIDDEN_MULTIPLE)) * HIDDEN_MULTIPLE

    def replace(self, **changes: int | float | bool | str | None) -> GPTConfig:
        """A copy with `changes`, validated like any other."""
        return GPTConfig.model_validate({**self.to_json(), **changes})

    def to_dict(self) -> dict[str, int | float | bool | str | None]:
        """Plain JSON-compatible values, the form checkpoints store."""
        return self.to_json()

    @classmethod
    def from_dict(
        cls, d: Mapping[str, object], *, source: str = "checkpoint model_args"
    ) -> GPTConfig:
        """Rebuild a config from `to_dict` output, rejecting anything a checkpoint should not hold.

        Every key is required, even those with defaults: a checkpoint missing `bias` would
        otherwise load into a model of a different shape and fail later, far from the cause.
        """
        missing = sorted(set(cls.model_fields) - d.keys())
        if missing:
            raise CheckpointError(f"{source} is missing {', '.join(missing)}; {OLDER_CHECKPOINT}")
        return parse_artifact(cls, dict(d), source, error=CheckpointError, remedy=OLDER_CHECKPOINT)
