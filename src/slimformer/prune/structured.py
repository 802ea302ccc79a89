"""Structured pruning: remove whole FFN neurons and attention heads by slicing the weight matrices, so the
saved checkpoint is a smaller dense model that reloads with `AutoModelForSequenceClassification` and exports
to ONNX unchanged.

FFN pruning keeps a BERT (only `intermediate_size` changes). Removing heads leaves fewer heads than
hidden_size / head_size, which a BertConfig cannot describe in transformers 5 (it derives the head size from
the head count); a head-pruned model is therefore saved as a SlimBERT (`slimformer.slimbert`: BERT plus an
`attention_head_size` field), which slimformer registers with transformers' Auto classes and which plain
transformers loads with `trust_remote_code=True` from the SlimBERT files saved beside the weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from slimformer.errors import ConfigError, ModelError

IMPORTANCE_METHODS = ("magnitude", "gradient", "movement")
UNIT_KINDS = ("ffn", "heads")


@dataclass
class LayerUnits:
    """The prunable units of one encoder layer: `inputs` produce them (groups of `width` output rows) and
    `output` consumes them (groups of `width` input columns). FFN neurons have width 1, heads head_size."""

    inputs: list[nn.Linear]
    output: nn.Linear
    width: int

    @property
    def count(self) -> int:
        return self.output.in_features // self.width


def _encoder_layers(model: nn.Module) -> Any:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    needed = ("intermediate", "output", "attention")
    if layers is None or not all(all(hasattr(layer, n) for n in needed) for layer in layers):
        raise ModelError(f"structured pruning supports BERT-style encoders; {type(model).__name__} is not one")
    return layers


def ffn_blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(intermediate, output) module pairs of each encoder layer (BERT-style naming)."""
    return [(layer.intermediate, layer.output) for layer in _encoder_layers(model)]


def layer_units(model: nn.Module, kind: str) -> list[LayerUnits]:
    """The FFN neurons (`kind="ffn"`) or attention heads (`"heads"`) of every encoder layer."""
    if kind == "ffn":
        return [LayerUnits([inter.dense], out.dense, 1) for inter, out in ffn_blocks(model)]
    units = []
    for layer in _encoder_layers(model):
        attention = layer.attention
        inputs = [getattr(attention.self, name, None) for name in ("query", "key", "value")]
        if not all(isinstance(m, nn.Linear) for m in inputs) or not hasattr(attention.self, "attention_head_size"):
            raise ModelError(f"head pruning supports BERT-style attention; {type(model).__name__} is not one")
        units.append(LayerUnits(inputs, attention.output.dense, attention.self.attention_head_size))
    return units


def unit_importance(
    model: nn.Module,
    method: str = "magnitude",
    batches: Iterable[dict[str, torch.Tensor]] | None = None,
    kinds: tuple[str, ...] = UNIT_KINDS,
) -> dict[str, list[torch.Tensor]]:
    """Importance of every FFN neuron and attention head: {kind: one score tensor per layer}.

    For a unit u with input rows W_in[u] (the FFN's first matrix; a head's query/key/value rows) and output
    columns W_out[:, u] (the FFN's second matrix; the attention output projection):
    - magnitude: ||W_in[u]|| * ||W_out[:, u]|| (how much the unit can carry through both matrices);
    - gradient: sum over batches of |dL/d(gate_u)|, a gate of 1 on the unit's output (Michel et al. 2019 for
      heads), computed as sum W_out[:, u] * dL/dW_out[:, u];
    - movement: -sum over batches of W * dL/dW over the unit's rows and columns (first-order movement score,
      Sanh et al. 2020): positive when training would move the unit's weights away from zero.
    """
    if method not in IMPORTANCE_METHODS:
        raise ConfigError(f"unknown importance {method!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
    units = {kind: layer_units(model, kind) for kind in kinds}
    if method == "magnitude":
        with torch.no_grad():
            return {kind: [_magnitude(u) for u in layers] for kind, layers in units.items()}
    if batches is None:
        raise ConfigError(f"{method} importance needs training batches")
    scores = {kind: [torch.zeros(u.count) for u in layers] for kind, layers in units.items()}
    was_training = model.training
    model.eval()  # no dropout: the scores describe the model as it will run
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        with torch.no_grad():
            for kind, layers in units.items():
                for score, u in zip(scores[kind], layers, strict=True):
                    gate = _grouped(u.output.weight * u.output.weight.grad, u.width, dim=0)
                    if method == "gradient":
                        score += gate.abs()
                    else:
                        score -= gate + sum(_grouped(m.weight * m.weight.grad, u.width, dim=1) for m in u.inputs)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def ffn_importance(
    model: nn.Module, method: str = "magnitude", batches: Iterable[dict[str, torch.Tensor]] | None = None
) -> list[torch.Tensor]:
    """Importance of every FFN neuron, one tensor of size intermediate_size per layer (see unit_importance)."""
    return unit_importance(model, method, batches, kinds=("ffn",))["ffn"]


def _grouped(values: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Sum `values` (a weight-shaped tensor) per unit: over the other axis and over each unit's `width`
    rows (dim=1 sums the row, giving one value per output row) or columns (dim=0)."""
    per_index = values.sum(dim=dim)
    return per_index.view(-1, width).sum(dim=1)


def _magnitude(units: LayerUnits) -> torch.Tensor:
    rows = sum(_grouped(m.weight.pow(2), units.width, dim=1) for m in units.inputs)
    columns = _grouped(units.output.weight.pow(2), units.width, dim=0)
    return rows.sqrt() * columns.sqrt()


def _unit_index(keep: torch.Tensor, width: int) -> torch.Tensor:
    """Row/column indices of the kept units, in their original order (slicing everything changes nothing)."""
    keep = torch.sort(keep).values
    return (keep[:, None] * width + torch.arange(width)).reshape(-1)


@torch.no_grad()
def slice_ffn(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep only the neurons `keep[layer]` (same count in every layer) and set config.intermediate_size."""
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise ValueError("every layer must keep the same number of FFN neurons (config has one intermediate_size)")
    for (inter, out), index in zip(ffn_blocks(model), keep, strict=True):
        index = _unit_index(index, 1)
        inter.dense = prune_linear_layer(inter.dense, index, dim=0)
        out.dense = prune_linear_layer(out.dense, index, dim=1)
    model.config.intermediate_size = sizes.pop()


@torch.no_grad()
def slice_heads(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep only the attention heads `keep[layer]` (same count in every layer): the query/key/value rows and
    the output projection's columns of the other heads are cut out. Sets config.num_attention_heads and
    config.attention_head_size (save the model with :func:`as_slim_bert`)."""
    from slimformer.slimbert.modeling_slimbert import set_attention_heads

    counts = {len(k) for k in keep}
    if len(counts) != 1 or min(counts) < 1:
        raise ValueError("every layer must keep the same number (>= 1) of heads (config has one head count)")
    layers = _encoder_layers(model)
    head_size = layers[0].attention.self.attention_head_size
    for layer, heads in zip(layers, keep, strict=True):
        attention, index = layer.attention, _unit_index(heads, head_size)
        for name in ("query", "key", "value"):
            setattr(attention.self, name, prune_linear_layer(getattr(attention.self, name), index, dim=0))
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        set_attention_heads(attention, len(heads), head_size)
    model.config.num_attention_heads = counts.pop()
    model.config.attention_head_size = head_size


def as_slim_bert(model: nn.Module) -> nn.Module:
    """The head-sliced BERT classifier `model` as a SlimBertForSequenceClassification with the same weights
    (what `save_pretrained` must write: a BertConfig cannot describe the removed heads)."""
    from slimformer.models import register_model_types
    from slimformer.slimbert.configuration_slimbert import SlimBertConfig
    from slimformer.slimbert.modeling_slimbert import SlimBertForSequenceClassification

    if isinstance(model, SlimBertForSequenceClassification):
        return model
    if getattr(model.config, "model_type", None) != "bert" or not hasattr(model, "bert"):
        raise ModelError(f"head pruning supports BERT classifiers; {type(model).__name__} is not one")
    register_model_types()
    settings = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        settings.pop(key, None)
    slim = SlimBertForSequenceClassification(SlimBertConfig(**settings))
    slim.load_state_dict(model.state_dict(), strict=True)
    slim.config._attn_implementation = model.config._attn_implementation
    return slim.train(model.training)


def prune_units(model: nn.Module, kind: str, fraction: float, importance: list[torch.Tensor]) -> dict[str, Any]:
    """Remove `fraction` of the FFN neurons or heads (`kind`) of every layer, least important first (at least
    one unit stays). Returns a summary of the sizes before and after."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"{'FFN' if kind == 'ffn' else 'heads'} fraction must be in [0, 1), got {fraction}")
    size = len(importance[0])
    kept = max(1, size - round(fraction * size))
    keep = [torch.topk(score, kept).indices for score in importance]
    if kind == "ffn":
        slice_ffn(model, keep)
        return {"intermediate_size_before": size, "intermediate_size_after": kept}
    slice_heads(model, keep)
    return {
        "heads_before": size,
        "heads_after": kept,
        "head_size": model.config.attention_head_size,
        "kept_heads": [sorted(k.tolist()) for k in keep],
    }


def prune_ffn(model: nn.Module, fraction: float, importance: list[torch.Tensor]) -> dict[str, Any]:
    """Remove `fraction` of the FFN neurons of every layer, least important first. Returns a summary."""
    return prune_units(model, "ffn", fraction, importance)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
