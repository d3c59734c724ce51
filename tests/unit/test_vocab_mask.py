"""The padded output ids: one mask, the same -inf columns for the GPT and both sampling paths."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ml_playground.device import Precision
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.model.vocab import mask_padded
from ml_playground.sample.hf import hf_forward, hf_step

VOCAB, PADDED = 10, 64
CPU = Precision(torch.device("cpu"), torch.float32)


def random_logits(*shape: int) -> Tensor:
    return torch.randn(*shape, PADDED, generator=torch.Generator().manual_seed(0))


def test_ids_past_the_vocabulary_are_minus_inf_and_the_others_unchanged() -> None:
    for shape in ((3, PADDED), (2, 5, PADDED)):
        logits = random_logits(*shape[:-1])

        masked = mask_padded(logits, VOCAB)

        assert masked.shape == shape
        assert torch.equal(masked[..., :VOCAB], logits[..., :VOCAB])
        assert torch.all(masked[..., VOCAB:] == float("-inf"))


def test_the_gpt_masks_its_next_token_logits_with_the_same_mask() -> None:
    config = GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config)
    logits = random_logits(2, 4)

    assert torch.equal(model.next_token_logits(logits), mask_padded(logits[:, -1, :], VOCAB))


class _LogitsModel(nn.Module):
    """Stands in for a transformers model: returns fixed logits and no cache."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits, past_key_values=None)


def test_the_hugging_face_step_and_forward_mask_the_same_ids() -> None:
    logits = random_logits(2, 4)
    model = _LogitsModel(logits)
    ids = torch.zeros(2, 4, dtype=torch.long)

    step = hf_step(model, CPU, vocab_size=VOCAB)(ids)
    forward = hf_forward(model, CPU, vocab_size=VOCAB)(ids)

    assert torch.equal(step, mask_padded(logits[:, -1, :], VOCAB))
    assert torch.equal(forward, mask_padded(logits, VOCAB))
