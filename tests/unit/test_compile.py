"""`maybe_compile`: torch.compile where it works, the eager model where it fails."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config

from ml_playground.device import resolve_precision
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.train.forward import maybe_compile

TINY = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)


def test_a_compile_that_fails_at_the_first_call_says_so_once_and_runs_eagerly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # torch.compile() itself succeeds; code generation fails lazily, at the first call,
    # as it does on a machine without a working C++ compiler.
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    torch._dynamo.reset()
    model = GPT(TINY)
    idx = torch.randint(TINY.vocab_size, (2, TINY.block_size))
    forward = maybe_compile(model, resolve_precision("cpu", "float32"))

    first, second = forward(idx, idx), forward(idx, idx)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("compile: failed at the first call (")
    assert lines[0].endswith("; running eagerly")
    assert "C++ compiler" in lines[0]
    assert torch.equal(first, model(idx, idx)) and torch.equal(second, first)
    torch.autograd.backward(second)  # the eager graph trains
    assert model.lm_head.weight.grad is not None
