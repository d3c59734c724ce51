"""The chunked vocabulary cross-entropy must be the plain cross-entropy, value and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from ml_playground.data.batches import IGNORE_INDEX
from ml_playground.model.loss import ReplacedRows, vocab_cross_entropy

ROWS, WIDTH, VOCAB = 37, 16, 101  # odd sizes, so chunks of 8 leave a ragged last chunk


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, WIDTH, generator=generator)
    weight = torch.randn(VOCAB, WIDTH, generator=generator) * 0.3
    targets = torch.randint(VOCAB, (ROWS,), generator=generator)
    targets[::5] = IGNORE_INDEX
    return hidden, weight, targets


def loss_and_grads(
    loss_fn: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_rows: int | None = None,
    softmax_rows: int | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    if loss_fn == "plain":
        loss = F.cross_entropy(h @ w.T, targets, ignore_index=IGNORE_INDEX)
    else:
        loss = vocab_cross_entropy(h, w, targets, chunk_rows=chunk_rows, softmax_rows=softmax_rows)
    torch.autograd.backward(loss * 3.0)  # a non-unit upstream gradient must be honoured
    assert h.grad is not None and w.grad is not None
    return loss.item(), h.grad, w.grad


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((actual - expected).square().sum() / expected.square().sum()).sqrt())


@pytest.mark.parametrize(
    ("chunk_rows", "softmax_rows"), [(1, 1), (8, 3), (8, 8), (ROWS, 5), (1000, 1000)]
)
def test_value_and_gradients_match_plain_cross_entropy_for_any_chunking(
    chunk_rows: int, softmax_rows: int
) -> None:
    hidden, weight, targets = inputs()
    expected = loss_and_grads("plain", hidden, weight, targets)

    value, grad_hidden, grad_weight = loss_and_grads(
        "chunked", hidden, weight, targets, chunk_rows=chunk_rows, softmax_rows=softmax_rows
    )

    assert value == pytest.approx(expected[0], rel=1e-6)
    torch.testing.assert_close(grad_hidden, expected[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_weight, expected[2], rtol=1e-5, atol=1e-7)


def test_under_bfloat16_autocast_it_matches_plain_cross_entropy_under_autocast() -> None:
    hidden, weight, targets = inputs(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads("plain", hidden, weight, targets)
        value, grad_hidden, grad_weight = loss_and_grads(
            "chunked", hidden, weight, targets, chunk_rows=8, softmax_rows=3
        )

    # Both run the same bf16 matmuls and a float32 softmax; only the order of float32 sums
    # differs, which can flip a bf16 rounding (2**-8 relative), so compare normwise.
    assert value == pytest.approx(expected[0], rel=1e-3)
    assert grad_hidden.dtype == grad_weight.dtype == torch.float32
    assert relative_error(grad_hidden, expected[1]) < 1e-2
    assert relative_error(grad_weight, expected[2]) < 1e-2


def test_without_gradients_it_returns_the_same_value() -> None:
    hidden, weight, targets = inputs()
    with torch.no_grad():
        value = vocab_cross_entropy(hidden, weight, targets, chunk_rows=8, softmax_rows=3)
    expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_all_targets_ignored_gives_nan_like_cross_entropy() -> None:
    hidden, weight, _ = inputs()
    ignored = torch.full((ROWS,), IGNORE_INDEX)
    assert math.isnan(vocab_cross_entropy(hidden, weight, ignored).item())


def test_mismatched_shapes_are_rejected() -> None:
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="expected hidden"):
        vocab_cross_entropy(hidden, weight, targets[:-1])


def test_a_first_call_under_inference_mode_does_not_break_later_training_calls() -> None:
    # float64: buffers no other test has created yet in this process.
    hidden, weight, targets = (t.double() if t.is_floating_point() else t for t in inputs(seed=3))
    with torch.inference_mode():
        first = vocab_cross_entropy(hidden, weight, targets)

    value, grad_hidden, _ = loss_and_grads("chunked", hidden, weight, targets)

    assert value == pytest.approx(first.item(), rel=1e-6)
    assert torch.isfinite(grad_hidden).all()


@pytest.mark.parametrize("chunk_rows", [None, 8])
def test_soft_capped_logits_match_the_plain_cap_then_cross_entropy(chunk_rows: int | None) -> None:
    hidden, weight, targets = inputs(3)
    weight = weight * 10  # logits beyond the cap, where tanh bends
    cap = 5.0
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = F.cross_entropy(cap * torch.tanh(h @ w.T / cap), targets, ignore_index=IGNORE_INDEX)
    torch.autograd.backward(expected)
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = vocab_cross_entropy(h2, w2, targets, softcap=cap, chunk_rows=chunk_rows, softmax_rows=3)
    torch.autograd.backward(got)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert h.grad is not None and h2.grad is not None and w.grad is not None
    assert w2.grad is not None
    assert relative_error(h2.grad, h.grad) < 1e-5
    assert relative_error(w2.grad, w.grad) < 1e-5


def test_replaced_rows_train_and_the_stored_matrix_stays_untouched() -> None:
    hidden, weight, targets = inputs(4)
    rows = torch.tensor([3, 50, 99])
    values = torch.randn(3, WIDTH) * 0.3
    targets[:6] = torch.tensor([3, 50, 99, 3, 1, 2])  # the replaced rows are targets too
    stored = weight.clone()
    h, v = hidden.clone().requires_grad_(), values.clone().requires_grad_()
    effective = weight.index_copy(0, rows, v)
    expected = F.cross_entropy(h @ effective.T, targets, ignore_index=IGNORE_INDEX)
    torch.autograd.backward(expected)
    h2, v2 = hidden.clone().requires_grad_(), values.clone().requires_grad_()
    got = vocab_cross_entropy(h2, weight, targets, replaced=ReplacedRows(rows, v2), chunk_rows=8)
    torch.autograd.backward(got * 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert h.grad is not None and h2.grad is not None and v.grad is not None
    assert v2.grad is not None
    assert relative_error(h2.grad, 2.0 * h.grad) < 1e-5
    assert relative_error(v2.grad, 2.0 * v.grad) < 1e-5
    assert torch.equal(weight, stored)


def test_a_frozen_matrix_gets_no_gradient_computed() -> None:
    hidden, weight, targets = inputs(5)
    h = hidden.clone().requires_grad_()
    loss = vocab_cross_entropy(h, weight, targets)
    torch.autograd.backward(loss)
    assert weight.grad is None and h.grad is not None
