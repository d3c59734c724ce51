"""The training loop's pieces that every backend shares: the optimizer and one step."""

from __future__ import annotations

import torch

from ml_playground.config import TrainConfig
from ml_playground.device import resolve_precision
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
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
