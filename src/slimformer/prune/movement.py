"""Movement pruning (Sanh, Wolf & Rush 2020): a learned importance score per weight, a top-k mask in the
forward pass with a straight-through estimator in the backward pass, the kept fraction on the cubic schedule.

The mask is a `torch.nn.utils.parametrize` parametrization of each encoder linear weight, so the model
runs unchanged inside a Trainer; `bake_masks` removes it and leaves plain dense weights with zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import TrainerCallback

from slimformer.prune.magnitude import encoder_linears, keep_top_mask

if TYPE_CHECKING:
    from slimformer.prune.schedule import CubicSchedule


class _TopKStraightThrough(torch.autograd.Function):
    """Forward: the binary top-k mask of the scores; backward: the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        return keep_top_mask(scores, sparsity).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


class MovementMask(nn.Module):
    """Parametrization W -> W * TopK(S): the scores S learn -sum(dL/dW * W), i.e. how far weights move away
    from zero during fine-tuning."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros_like(weight))  # constant start: every weight ties until it moves
        self.sparsity = 0.0  # set by MovementPruningCallback

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopKStraightThrough.apply(self.scores, self.sparsity)


def add_movement_masks(model: nn.Module) -> dict[str, MovementMask]:
    """Parametrize every encoder linear weight with a MovementMask; returns the masks by layer name."""
    masks = {}
    for name, layer in encoder_linears(model).items():
        mask = MovementMask(layer.weight)
        parametrize.register_parametrization(layer, "weight", mask)
        masks[name] = mask
    return masks


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The movement scores (they get their own, larger learning rate)."""
    return [p for n, p in model.named_parameters() if n.endswith(".scores")]


@torch.no_grad()
def bake_masks(model: nn.Module) -> None:
    """Replace each parametrized weight by its masked dense value (zeros where pruned) and drop the scores."""
    for layer in encoder_linears(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


class MovementPruningCallback(TrainerCallback):
    """Sets every MovementMask's sparsity from the cubic schedule; masks follow the learned scores at each
    forward pass, and the target sparsity only changes at the schedule's update steps."""

    def __init__(self, masks: dict[str, MovementMask], schedule: CubicSchedule) -> None:
        self.masks = masks
        self.schedule = schedule

    def set_sparsity(self, step: int) -> None:
        sparsity = self.schedule.sparsity(step)
        for mask in self.masks.values():
            mask.sparsity = sparsity

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.set_sparsity(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.set_sparsity(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for mask in self.masks.values():
            mask.sparsity = self.schedule.final_sparsity
