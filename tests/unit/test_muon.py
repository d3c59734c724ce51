"""The batched Muon step is torch.optim.Muon's update, and its state is torch's."""

from __future__ import annotations

import copy
from typing import cast

import pytest
import torch

from ml_playground.train import muon
from ml_playground.train.muon import BatchedMuon, orthogonalise

# Wide, tall and square, two of a kind each, so stacks mix transposed and plain matrices.
SHAPES = [(24, 8), (8, 24), (24, 8), (16, 16), (8, 24), (16, 16), (40, 12)]


def matrices(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def set_gradients(params: list[torch.nn.Parameter], step: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def _torch_ns_dtype(param: torch.Tensor) -> torch.dtype:
    del param
    return torch.bfloat16


@pytest.mark.parametrize(
    ("weight_decay", "adjust_lr_fn", "nesterov"),
    [(0.0, "original", True), (0.1, "match_rms_adamw", False)],
    ids=["as-trained", "decay-rms-no-nesterov"],
)
def test_batched_steps_equal_torch_muon_steps(
    weight_decay: float, adjust_lr_fn: str, nesterov: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch's Muon always orthogonalises in bfloat16; on a CPU without bfloat16 instructions
    # ours picks float32 (ns_dtype), so pin it to torch's dtype to compare the same ops.
    monkeypatch.setattr(muon, "ns_dtype", _torch_ns_dtype)
    ours, theirs = matrices(0), matrices(0)
    batched = BatchedMuon(
        ours, 0.02, weight_decay, 0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn
    )
    reference: torch.optim.Optimizer = torch.optim.Muon(
        theirs, 0.02, weight_decay, 0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn
    )

    for step in range(4):
        set_gradients(ours, step)
        set_gradients(theirs, step)
        batched.step()
        reference.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves closure's type open

    # Same ops in the same dtypes; a batched matmul may only add in another order.
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(
            batched.state[a]["momentum_buffer"], reference.state[b]["momentum_buffer"]
        )


def test_orthogonalised_matrices_have_singular_values_near_one_in_their_own_shape() -> None:
    generator = torch.Generator().manual_seed(3)
    given = [torch.randn(shape, generator=generator) for shape in SHAPES]

    result = orthogonalise(given, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)

    for before, after in zip(given, result, strict=True):
        assert after.shape == before.shape and after.dtype == before.dtype
        singular = cast(torch.Tensor, torch.linalg.svdvals(after))  # pyright: ignore[reportUnknownMemberType] - torch.linalg is unannotated
        # Muon's quintic iteration lands in about (0.7, 1.2), not exactly on 1.
        assert float(singular.min()) > 0.5 and float(singular.max()) < 1.5


def test_a_state_saved_by_torch_muon_resumes_the_batched_one_bit_for_bit() -> None:
    first, second = matrices(0), matrices(0)
    torch_muon: torch.optim.Optimizer = torch.optim.Muon(first, lr=0.02, weight_decay=0.0)
    for step in range(2):
        set_gradients(first, step)
        torch_muon.step()  # pyright: ignore[reportUnknownMemberType] - torch leaves closure's type open
    for target, source in zip(second, first, strict=True):
        target.data.copy_(source.data)
    resumed = BatchedMuon(second, lr=0.02, weight_decay=0.0)
    resumed.load_state_dict(copy.deepcopy(torch_muon.state_dict()))
    again = BatchedMuon(matrices(0), lr=0.02, weight_decay=0.0)
    again.load_state_dict(resumed.state_dict())

    assert again.state_dict()["param_groups"] == torch_muon.state_dict()["param_groups"]
    for i in range(len(SHAPES)):
        assert torch.equal(
            resumed.state_dict()["state"][i]["momentum_buffer"],
            torch_muon.state_dict()["state"][i]["momentum_buffer"],
        )
