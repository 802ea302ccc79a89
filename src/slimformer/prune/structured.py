"""Structured pruning: remove whole FFN neurons and attention heads by slicing the weight matrices, so the
saved checkpoint is a smaller dense model that reloads with `AutoModelForSequenceClassification` and exports
to ONNX unchanged.

Where each family keeps its FFN and attention Linears comes from `slimformer.families`. FFN pruning keeps
the family's own model type (only the FFN width field changes). Removing heads leaves fewer heads than
hidden_size / head_size, which no family's config can describe in transformers 5; a head-pruned model is
saved as a slim model type (BERT: SlimBERT, `slimformer.slimbert`; others: `slim-<model_type>` from
`slimformer.slimmodels`) whose config adds `attention_head_size` (see `slimformer.families` for the design).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimformer.errors import ConfigError
from slimformer.families import Family, encoder_layers, family_of, submodule
from slimformer.prune.slicing import replace_linear, slice_layer_heads, slice_shared_head_table, unit_index

IMPORTANCE_METHODS = ("magnitude", "gradient", "movement")
UNIT_KINDS = ("ffn", "heads")


@dataclass
class LayerUnits:
    """The prunable units of one encoder layer: `inputs` produce them (groups of `width` output rows, in each
    of `chunks` stacked blocks) and `output` consumes them (groups of `width` input columns). FFN neurons have
    width 1, heads head_size."""

    inputs: list[nn.Linear]
    output: nn.Linear
    width: int
    chunks: int = 1  # the inputs stack this many blocks of rows (fused query/key/value: 3; gated FFN: 2)

    @property
    def count(self) -> int:
        return self.output.in_features // self.width


def _encoder_layers(model: nn.Module) -> tuple[Family, list[nn.Module]]:
    family = family_of(model)
    return family, encoder_layers(model)


def ffn_blocks(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """(first, second) FFN Linear pairs of each distinct encoder layer."""
    family, layers = _encoder_layers(model)
    return [(submodule(layer, family.ffn_in), submodule(layer, family.ffn_out)) for layer in layers]


def layer_units(model: nn.Module, kind: str) -> list[LayerUnits]:
    """The FFN neurons (`kind="ffn"`) or attention heads (`"heads"`) of every distinct encoder layer."""
    family, layers = _encoder_layers(model)
    if kind == "ffn":
        return [LayerUnits([first], second, 1, family.ffn_chunks) for first, second in ffn_blocks(model)]
    units = []
    for layer in layers:
        attention = submodule(layer, family.attention)
        inputs = [submodule(attention, name) for name in family.qkv]
        # DeBERTa without shared attention keys has its own position projections, sliced like the keys
        inputs += [getattr(attention, name) for name in family.extra_head_inputs if hasattr(attention, name)]
        head_size = int(getattr(attention, family.head_size_attr))
        units.append(LayerUnits(inputs, submodule(layer, family.attention_out), head_size, family.qkv_chunks))
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
                        score -= gate + sum(_grouped(m.weight * m.weight.grad, u.width, 1, u.chunks) for m in u.inputs)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def ffn_importance(
    model: nn.Module, method: str = "magnitude", batches: Iterable[dict[str, torch.Tensor]] | None = None
) -> list[torch.Tensor]:
    """Importance of every FFN neuron, one tensor of size intermediate_size per layer (see unit_importance)."""
    return unit_importance(model, method, batches, kinds=("ffn",))["ffn"]


def _grouped(values: torch.Tensor, width: int, dim: int, chunks: int = 1) -> torch.Tensor:
    """Sum `values` (a weight-shaped tensor) per unit: over the other axis and over each unit's `width`
    rows (dim=1 sums the row, giving one value per output row; rows stack `chunks` blocks) or columns."""
    per_index = values.sum(dim=dim)
    return per_index.view(chunks, -1, width).sum(dim=(0, 2))


def _magnitude(units: LayerUnits) -> torch.Tensor:
    rows = sum(_grouped(m.weight.pow(2), units.width, 1, units.chunks) for m in units.inputs)
    columns = _grouped(units.output.weight.pow(2), units.width, dim=0)
    return rows.sqrt() * columns.sqrt()


@torch.no_grad()
def slice_ffn(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep only the neurons `keep[layer]` (same count in every layer) and set the config's FFN width."""
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise ValueError("every layer must keep the same number of FFN neurons (config has one intermediate_size)")
    family, layers = _encoder_layers(model)
    width = int(getattr(model.config, family.ffn_size_field))
    for layer, neurons in zip(layers, keep, strict=True):
        replace_linear(layer, family.ffn_in, unit_index(neurons, 1, family.ffn_chunks, width), dim=0)
        replace_linear(layer, family.ffn_out, unit_index(neurons, 1), dim=1)
    setattr(model.config, family.ffn_size_field, sizes.pop())


@torch.no_grad()
def slice_heads(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep only the attention heads `keep[layer]` (same count in every layer): the query/key/value rows and
    the output projection's columns of the other heads are cut out (and the columns of a table all layers share,
    which needs the same heads in every layer). Sets config.num_attention_heads and
    config.attention_head_size (save the model with :func:`as_slim_model`)."""
    counts = {len(k) for k in keep}
    if len(counts) != 1 or min(counts) < 1:
        raise ValueError("every layer must keep the same number (>= 1) of heads (config has one head count)")
    family, layers = _encoder_layers(model)
    units = layer_units(model, "heads")
    head_size = units[0].width
    if family.shared_head_table:
        if any(not torch.equal(torch.sort(k).values, torch.sort(keep[0]).values) for k in keep):
            raise ValueError(f"{family.name}'s layers share one table indexed by head: keep the same heads in each")
        slice_shared_head_table(model, family.shared_head_table, keep[0])
    for layer, heads, unit in zip(layers, keep, units, strict=True):
        slice_layer_heads(layer, family, heads, head_size, unit.count)
    model.config.num_attention_heads = counts.pop()
    model.config.attention_head_size = head_size


def as_slim_model(model: nn.Module) -> nn.Module:
    """The head-sliced classifier `model` as its family's slim model with the same weights (what
    `save_pretrained` must write: the family's own config cannot describe the removed heads). BERT becomes a
    SlimBertForSequenceClassification, any other family a `slim-<model_type>` classifier."""
    from slimformer.models import register_model_types
    from slimformer.slimbert.configuration_slimbert import SlimBertConfig
    from slimformer.slimbert.modeling_slimbert import SlimBertForSequenceClassification
    from slimformer.slimmodels import register_slim_families, slim_classes

    family = family_of(model)
    if family.name == "bert":
        register_model_types()
        config_class, model_class = SlimBertConfig, SlimBertForSequenceClassification
    else:
        register_slim_families()
        config_class, model_class = slim_classes(family)
    if isinstance(model, model_class):
        return model
    settings = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        settings.pop(key, None)
    slim = model_class(config_class(**settings))
    slim.load_state_dict(model.state_dict(), strict=True)
    slim.config._attn_implementation = model.config._attn_implementation
    return slim.train(model.training)


as_slim_bert = as_slim_model  # the earlier name (BERT only), kept for callers


def units_to_keep(family: Family, kind: str, kept: int, importance: list[torch.Tensor]) -> list[torch.Tensor]:
    """The `kept` most important units of each layer; for heads of a family whose layers share a table indexed
    by head (MPNet), the same heads in every layer: the most important by their importance summed over layers."""
    if kind == "heads" and family.shared_head_table:
        common = torch.topk(torch.stack(importance).sum(dim=0), kept).indices
        return [common.clone() for _ in importance]
    return [torch.topk(score, kept).indices for score in importance]


def prune_units(model: nn.Module, kind: str, fraction: float, importance: list[torch.Tensor]) -> dict[str, Any]:
    """Remove `fraction` of the FFN neurons or heads (`kind`) of every layer, least important first (at least
    one unit stays). Returns a summary of the sizes before and after."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"{'FFN' if kind == 'ffn' else 'heads'} fraction must be in [0, 1), got {fraction}")
    size = len(importance[0])
    kept = max(1, size - round(fraction * size))
    keep = units_to_keep(family_of(model), kind, kept, importance)
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
