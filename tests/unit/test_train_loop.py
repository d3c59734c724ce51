"""The training loop's pieces that every backend shares: the optimizer and one step."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config

from ml_playground.config import TrainConfig
from ml_playground.device import resolve_precision
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.train.loop import maybe_compile
from ml_playground.train.optim import adamw

TINY = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)


def test_optimizer_decays_matrices_only_and_holds_every_parameter_once() -> None:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    model = GPT(TINY.replace(bias=True))
    settings = TrainConfig.model_validate({"optim": {"weight_decay": 0.1}})

    optimizer = adamw(list(model.parameters()), settings, resolve_precision("cpu", "float32"))

    decay, no_decay = optimizer.param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    assert no_decay_names == {
        name for name in names.values() if name.endswith(".bias") or ".ln_" in name
    }
    assert "transformer.wte.weight" in decay_names
    assert "transformer.wpe.weight" in decay_names
    every = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))


def test_optimizer_leaves_out_an_empty_group() -> None:
    matrix = torch.nn.Parameter(torch.zeros(3, 3))

    optimizer = adamw([matrix], TrainConfig(), resolve_precision("cpu", "float32"))

    assert [len(group["params"]) for group in optimizer.param_groups] == [1]


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
