"""The optimizers a run steps: AdamW alone, or Muon beside AdamW (`[train.optim] name`).

Muon orthogonalises the update of a 2-D matrix, so it is used only for the matrices inside
the transformer blocks (`transformer.h.*`); embeddings, the tied head, norm gains and
biases keep AdamW, as in modded-nanogpt and nanochat. `Optimizers` holds one or both and
is stepped as one: each keeps its own peak learning rate and the schedule scales all of
them by the same factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ml_playground.config import OptimizerName, TrainConfig
from ml_playground.device import Precision
from ml_playground.errors import ConfigError
from ml_playground.train.muon import BatchedMuon

StateDict = dict[str, Any]
BLOCKS_PREFIX = "transformer.h."
"""Where the GPT keeps its transformer blocks, for either architecture."""


@dataclass(frozen=True)
class Part:
    """One optimizer and its peak learning rate relative to [train.optim] learning_rate."""

    name: OptimizerName
    optimizer: torch.optim.Optimizer
    lr_ratio: float


class Optimizers:
    """AdamW, or Muon and AdamW, stepped together.

    A GradScaler unscales and steps each torch optimizer on its own (it records which it
    has unscaled), so the loop hands the scaler over instead of calling step() itself.
    """

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = tuple(parts)

    @property
    def name(self) -> OptimizerName:
        return "muon" if len(self.parts) > 1 else "adamw"

    def set_learning_rate(self, lr: float) -> None:
        """Put every group at the scheduled `lr`, in AdamW's units; Muon follows in proportion.

        For AdamW the ratio is exactly 1.0, so its groups get `lr` itself, bit for bit.
        """
        for part in self.parts:
            for group in part.optimizer.param_groups:
                group["lr"] = lr * part.lr_ratio

    def unscale_gradients(self, scaler: torch.amp.GradScaler) -> None:
        for part in self.parts:
            scaler.unscale_(part.optimizer)

    def step(self, scaler: torch.amp.GradScaler) -> None:
        """Step each optimizer through the scaler (which skips a step with inf gradients)."""
        for part in self.parts:
            scaler.step(part.optimizer)

    def zero_grad(self) -> None:
        for part in self.parts:
            part.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> StateDict:
        """AdamW's own state alone, or with Muon one per name: format_version 1's layout."""
        if len(self.parts) == 1:
            return self.parts[0].optimizer.state_dict()
        return {part.name: part.optimizer.state_dict() for part in self.parts}

    def load_state_dict(self, state: StateDict) -> None:
        """The inverse of `state_dict`; check `saved_optimizer(state)` matches first."""
        if len(self.parts) == 1:
            self.parts[0].optimizer.load_state_dict(state)
            return
        for part in self.parts:
            part.optimizer.load_state_dict(state[part.name])


def saved_optimizer(state: StateDict) -> OptimizerName:
    """Which optimizer wrote a state: Muon runs save {"adamw": ..., "muon": ...}."""
    return "muon" if set(state) == {"adamw", "muon"} else "adamw"


def build_optimizers(model: nn.Module, train: TrainConfig, precision: Precision) -> Optimizers:
    """The optimizers [train.optim] names, over the model's parameters that require grad."""
    optim = train.optim
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if optim.name == "adamw":
        adam = adamw([p for _, p in named], train, precision)
        return Optimizers([Part("adamw", adam, 1.0)])
    matrices, rest = muon_split(named)
    if not matrices:
        raise ConfigError(
            f"train.optim.name = 'muon' found no matrices under {BLOCKS_PREFIX}* in this model; "
            "use name = 'adamw'"
        )
    # torch's Muon update, batched over matrices of one shape (train/muon.py says why).
    muon = BatchedMuon(
        matrices,
        lr=optim.muon_learning_rate,
        momentum=optim.muon_momentum,
        # Muon's decoupled decay shrinks by lr * weight_decay per step, and its lr is ~30x
        # AdamW's: weight_decay would decay these matrices 30x harder than AdamW does.
        # Keller Jordan's Muon and nanochat train them without decay at this scale.
        weight_decay=0.0,
        # Pinned, so a change of torch's default cannot move a run: the update is scaled
        # by sqrt(max(1, rows/cols)), the scaling muon_learning_rate's default is tuned for.
        adjust_lr_fn="original",
    )
    return Optimizers(
        [
            Part("adamw", adamw(rest, train, precision), 1.0),
            Part("muon", muon, optim.muon_learning_rate / optim.learning_rate),
        ]
    )


def muon_split(
    named: Sequence[tuple[str, nn.Parameter]],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices inside the transformer blocks, for Muon; everything else, for AdamW)."""
    matrices = [p for name, p in named if name.startswith(BLOCKS_PREFIX) and p.dim() == 2]
    chosen = {id(p) for p in matrices}
    return matrices, [p for _, p in named if id(p) not in chosen]


def adamw(
    parameters: list[nn.Parameter], train: TrainConfig, precision: Precision
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only.

    Biases and norm gains are vectors that shift and scale activations; decaying them
    toward zero regularises nothing useful and fights the normalisation.
    """
    optim = train.optim
    groups: list[dict[str, Any]] = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    betas = (optim.beta1, optim.beta2)
    if precision.device_type in ("cuda", "cpu"):
        # The fused kernel updates every parameter in one pass (on a 30M-parameter GPT on
        # CPU about 4x faster than foreach).
        return torch.optim.AdamW(groups, lr=optim.learning_rate, betas=betas, fused=True)
    return torch.optim.AdamW(groups, lr=optim.learning_rate, betas=betas, foreach=True)
