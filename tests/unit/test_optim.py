"""The optimizers a run steps: which parameters Muon takes, the shared schedule, the state."""

from __future__ import annotations

import copy

import pytest
import torch

from ml_playground.config import ScheduleConfig, TrainConfig
from ml_playground.device import resolve_precision
from ml_playground.errors import ConfigError
from ml_playground.model.config import GPTConfig
from ml_playground.model.gpt import GPT
from ml_playground.train.optim import Optimizers, adamw, build_optimizers, saved_optimizer
from ml_playground.train.schedule import learning_rate_at

TINY = GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=True)
CPU = resolve_precision("cpu", "float32")
MUON = TrainConfig.model_validate(
    {"optim": {"name": "muon", "learning_rate": 1e-3, "muon_learning_rate": 0.02}}
)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    return GPT(TINY)


def names_by_optimizer(model: GPT, optimizers: Optimizers) -> dict[str, set[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return {
        part.name: {names[id(p)] for group in part.optimizer.param_groups for p in group["params"]}
        for part in optimizers.parts
    }


def train_steps(model: GPT, optimizers: Optimizers, steps: int, seed: int) -> None:
    scaler = torch.amp.GradScaler(enabled=False)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, TINY.vocab_size, (4, TINY.block_size), generator=generator)
        y = torch.randint(0, TINY.vocab_size, (4, TINY.block_size), generator=generator)
        loss: torch.Tensor = model(x, y)
        torch.autograd.backward(loss)
        optimizers.step(scaler)
        optimizers.zero_grad()


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else() -> None:
    model = tiny_gpt()

    split = names_by_optimizer(model, build_optimizers(model, MUON, CPU))

    every = {name for name, _ in model.named_parameters()}
    assert split["muon"] == {
        name
        for name, p in model.named_parameters()
        if name.startswith("transformer.h.") and p.dim() == 2
    }
    assert "transformer.h.0.attn.c_attn.weight" in split["muon"]
    assert "transformer.h.1.mlp.c_proj.weight" in split["muon"]
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= split["adamw"]
    assert "transformer.ln_f.weight" in split["adamw"]
    assert "transformer.h.0.attn.c_attn.bias" in split["adamw"]
    assert "transformer.h.0.ln_1.weight" in split["adamw"]
    assert split["muon"] | split["adamw"] == every
    assert not split["muon"] & split["adamw"]


def test_the_tied_head_trains_once_with_adamw() -> None:
    model = tiny_gpt()

    optimizers = build_optimizers(model, MUON, CPU)

    held = [
        p for part in optimizers.parts for g in part.optimizer.param_groups for p in g["params"]
    ]
    assert sum(p is model.lm_head.weight for p in held) == 1
    assert len(held) == len({id(p) for p in held}) == len(list(model.parameters()))


def test_adamw_alone_holds_every_parameter() -> None:
    model = tiny_gpt()

    optimizers = build_optimizers(model, TrainConfig(), CPU)

    assert optimizers.name == "adamw"
    assert names_by_optimizer(model, optimizers) == {
        "adamw": {name for name, _ in model.named_parameters()}
    }


def test_muon_without_block_matrices_is_a_one_line_config_error() -> None:
    model = torch.nn.Linear(4, 4)  # no transformer.h.* at all

    with pytest.raises(ConfigError, match=r"found no matrices under transformer\.h\.\*"):
        build_optimizers(model, MUON, CPU)


@pytest.mark.parametrize("step", [0, 3, 9, 50, 100, 500])
def test_the_schedule_scales_both_optimizers_by_the_same_factor(step: int) -> None:
    schedule = ScheduleConfig(warmup_iters=10, lr_decay_iters=100, min_lr=1e-4)
    optimizers = build_optimizers(tiny_gpt(), MUON, CPU)
    lr = learning_rate_at(step, MUON.optim, schedule)

    optimizers.set_learning_rate(lr)

    rates = {
        part.name: {group["lr"] for group in part.optimizer.param_groups}
        for part in optimizers.parts
    }
    assert rates["adamw"] == {lr}, "AdamW runs at exactly the scheduled rate"
    (muon_lr,) = rates["muon"]
    assert muon_lr / lr == pytest.approx(0.02 / 1e-3)


def test_a_muon_state_restored_into_fresh_optimizers_continues_identically() -> None:
    trained = tiny_gpt()
    trained_optimizers = build_optimizers(trained, MUON, CPU)
    train_steps(trained, trained_optimizers, steps=3, seed=1)
    # A copy, as a checkpoint holds: state_dict() shares the live tensors.
    state = copy.deepcopy(trained_optimizers.state_dict())
    restored = tiny_gpt(seed=7)
    restored.load_state_dict(trained.state_dict())
    restored_optimizers = build_optimizers(restored, MUON, CPU)

    restored_optimizers.load_state_dict(state)
    train_steps(trained, trained_optimizers, steps=2, seed=2)
    train_steps(restored, restored_optimizers, steps=2, seed=2)

    assert set(state) == {"adamw", "muon"}
    assert saved_optimizer(state) == "muon"
    assert all(state["muon"]["state"][i]["momentum_buffer"].abs().sum() > 0 for i in (0, 1))
    for (name, expected), actual in zip(
        trained.state_dict().items(), restored.state_dict().values(), strict=True
    ):
        assert torch.equal(actual, expected), name


def test_adamw_state_keeps_the_format_older_checkpoints_hold() -> None:
    model = tiny_gpt()
    optimizers = build_optimizers(model, TrainConfig(), CPU)
    train_steps(model, optimizers, steps=1, seed=1)

    state = optimizers.state_dict()

    assert set(state) == {"state", "param_groups"}
    assert saved_optimizer(state) == "adamw"


def test_a_step_with_overflowing_gradients_leaves_both_optimizers_untouched() -> None:
    # float16 on CUDA runs through a GradScaler; it unscales and steps each optimizer on
    # its own, and an inf in any gradient must skip Muon's step as well as AdamW's.
    model = tiny_gpt()
    optimizers = build_optimizers(model, MUON, CPU)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.zeros((2, TINY.block_size), dtype=torch.long)
    loss: torch.Tensor = model(x, x) * float("inf")

    torch.autograd.backward(scaler.scale(loss))
    optimizers.unscale_gradients(scaler)
    optimizers.step(scaler)
    scaler.update()

    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert scaler.get_scale() == 512.0, "the scaler backed off once, for the whole step"
    muon = next(part.optimizer for part in optimizers.parts if part.name == "muon")
    assert not muon.state, "Muon's momentum did not take in the inf gradient"


def test_muon_momentum_reaches_the_muon_optimizer() -> None:
    settings = MUON.model_copy(
        update={"optim": MUON.optim.model_copy(update={"muon_momentum": 0.5})}
    )

    optimizers = build_optimizers(tiny_gpt(), settings, CPU)

    [muon] = [part.optimizer for part in optimizers.parts if part.name == "muon"]
    assert {group["momentum"] for group in muon.param_groups} == {0.5}


def test_optimizer_decays_matrices_only_and_holds_every_parameter_once() -> None:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType] - torch leaves `seed` unannotated
    model = GPT(TINY)  # bias=True: the biases are left undecayed
    settings = TrainConfig.model_validate({"optim": {"weight_decay": 0.1}})

    optimizer = adamw(list(model.parameters()), settings, CPU)

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

    optimizer = adamw([matrix], TrainConfig(), CPU)

    assert [len(group["params"]) for group in optimizer.param_groups] == [1]
