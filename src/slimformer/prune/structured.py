"""Structured pruning: remove whole FFN neurons by slicing the weight matrices, so the saved checkpoint is a
smaller dense BERT that reloads with `AutoModelForSequenceClassification` and exports to ONNX unchanged.

Attention heads: transformers 5's BERT derives the head size as hidden_size / num_attention_heads and has no
`prune_heads`, so a checkpoint with fewer (32-wide) heads cannot be reloaded as a BERT; head pruning is
therefore refused with a clear message (a quarter of the FFN costs as many FLOPs as half the heads).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from slimformer.errors import ConfigError, ModelError

IMPORTANCE_METHODS = ("magnitude", "gradient", "movement")


def ffn_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(intermediate, output) module pairs of each encoder layer (BERT-style naming)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers):
        raise ModelError(f"structured pruning supports BERT-style encoders; {type(model).__name__} is not one")
    return [(layer.intermediate, layer.output) for layer in layers]


def ffn_importance(
    model: nn.Module, method: str = "magnitude", batches: Iterable[dict[str, torch.Tensor]] | None = None
) -> list[torch.Tensor]:
    """Importance of every FFN neuron, one tensor of size intermediate_size per layer.

    - magnitude: ||w_in[i, :]|| * ||w_out[:, i]|| (how much the neuron can carry through both matrices);
    - gradient: sum over batches of |dL/d(gate_i)|, a gate of 1 on the neuron's activation (Michel et al.
      2019), computed as sum_k w_out[k, i] * dL/dw_out[k, i];
    - movement: -sum over batches of w_out * dL/dw_out and w_in * dL/dw_in (first-order movement score,
      Sanh et al. 2020): positive when training would move the neuron's weights away from zero.
    """
    if method not in IMPORTANCE_METHODS:
        raise ConfigError(f"unknown importance {method!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
    blocks = ffn_blocks(model)
    if method == "magnitude":
        with torch.no_grad():
            return [inter.dense.weight.norm(dim=1) * out.dense.weight.norm(dim=0) for inter, out in blocks]
    if batches is None:
        raise ConfigError(f"{method} importance needs training batches")
    scores = [torch.zeros(inter.dense.out_features) for inter, _ in blocks]
    was_training = model.training
    model.eval()  # no dropout: the scores describe the model as it will run
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        with torch.no_grad():
            for score, (inter, out) in zip(scores, blocks, strict=True):
                gate = (out.dense.weight * out.dense.weight.grad).sum(dim=0)
                if method == "gradient":
                    score += gate.abs()
                else:
                    score -= gate + (inter.dense.weight * inter.dense.weight.grad).sum(dim=1)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


@torch.no_grad()
def slice_ffn(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep only the neurons `keep[layer]` (same count in every layer) and set config.intermediate_size."""
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise ValueError("every layer must keep the same number of FFN neurons (config has one intermediate_size)")
    for (inter, out), index in zip(ffn_blocks(model), keep, strict=True):
        index = torch.sort(index).values  # keep the original order: slicing with no pruning changes nothing
        inter.dense = prune_linear_layer(inter.dense, index, dim=0)
        out.dense = prune_linear_layer(out.dense, index, dim=1)
    model.config.intermediate_size = sizes.pop()


def prune_ffn(model: nn.Module, fraction: float, importance: list[torch.Tensor]) -> dict[str, Any]:
    """Remove `fraction` of the FFN neurons of every layer, least important first. Returns a summary."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"FFN fraction must be in [0, 1), got {fraction}")
    size = len(importance[0])
    kept = max(1, size - round(fraction * size))
    keep = [torch.topk(score, kept).indices for score in importance]
    slice_ffn(model, keep)
    return {"intermediate_size_before": size, "intermediate_size_after": kept}


def check_heads_fraction(fraction: float) -> None:
    """Refuse head pruning that the checkpoint format cannot represent (see module docstring)."""
    if fraction:
        raise ConfigError(
            "removing attention heads is not possible for a BERT checkpoint in transformers 5 (head size is "
            "hidden_size / num_attention_heads, no prune_heads); use --ffn-fraction instead: removing 75% of "
            "the FFN neurons saves the FLOPs of half the heads plus half the FFN"
        )


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
