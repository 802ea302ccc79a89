"""Unstructured magnitude pruning (Zhu & Gupta 2017): per-layer masks on the encoder's linear layers,
recomputed on the cubic schedule by a TrainerCallback and re-applied after every optimizer step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback

from slimformer.errors import ModelError

if TYPE_CHECKING:
    from slimformer.prune.schedule import CubicSchedule


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear layers inside the encoder, by qualified name (no embeddings, pooler or head); where the
    encoder is comes from the model's family (`slimformer.families`)."""
    from slimformer.families import family_for_model_type, submodule

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        prefix = family_for_model_type(model_type).encoder
    except ModelError:
        # an unlisted family: BERT's layout (`<base>.encoder`) when it has one, else the family error
        base = getattr(model, "base_model", model)
        encoder = getattr(base, "encoder", None)
        if encoder is None:
            raise
        prefix = next(name for name, module in model.named_modules() if module is encoder)
    encoder = submodule(model, prefix)
    return {f"{prefix}.{name}": module for name, module in encoder.named_modules() if isinstance(module, nn.Linear)}


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the largest-|w| entries so that round(sparsity * numel) entries are pruned."""
    return keep_top_mask(weight.detach().abs(), sparsity)


def keep_top_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (same shape) with the round(sparsity * n) lowest `scores` set to False."""
    flat = scores.detach().flatten()
    pruned = round(sparsity * flat.numel())
    mask = torch.ones_like(flat, dtype=torch.bool)
    if pruned > 0:
        # topk over the negated scores gives the exact count even when many scores tie (e.g. zeros)
        mask[torch.topk(flat, pruned, largest=False, sorted=False).indices] = False
    return mask.view_as(scores)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in each encoder linear layer."""
    return {name: round(float((layer.weight == 0).float().mean()), 4) for name, layer in encoder_linears(model).items()}


def encoder_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all encoder linear weights together."""
    layers = encoder_linears(model).values()
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    return round(zeros / sum(layer.weight.numel() for layer in layers), 4)


class MagnitudePruningCallback(TrainerCallback):
    """Keeps the encoder's linear weights pruned to the cubic schedule's sparsity during training.

    Masks are recomputed from |w| only at the schedule's update steps (t0, t0 + dt, ...) and held fixed in
    between; after every optimizer step the masks are multiplied in again so pruned weights stay zero.
    """

    def __init__(self, model: nn.Module, schedule: CubicSchedule) -> None:
        self.schedule = schedule
        self.layers = encoder_linears(model)
        self.masks: dict[str, torch.Tensor] = {}
        self.current_sparsity = 0.0
        self.updates: list[tuple[int, float]] = []  # (step, sparsity) of each mask update, for the report

    @torch.no_grad()
    def update_masks(self, step: int) -> None:
        self.current_sparsity = self.schedule.sparsity(step)
        self.masks = {name: magnitude_mask(layer.weight, self.current_sparsity) for name, layer in self.layers.items()}
        self.updates.append((step, round(self.current_sparsity, 4)))
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, mask in self.masks.items():
            self.layers[name].weight.mul_(mask)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.schedule.is_update_step(state.global_step):
            self.update_masks(state.global_step)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.apply_masks()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.schedule.is_update_step(state.global_step):
            self.update_masks(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a run shorter than the schedule still ends at the final sparsity
        if self.current_sparsity < self.schedule.final_sparsity:
            self.update_masks(self.schedule.start_step + self.schedule.num_steps * self.schedule.frequency)
