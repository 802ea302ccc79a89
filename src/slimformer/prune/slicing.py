"""Cutting attention heads and FFN neurons out of Linear layers: the primitives structured pruning slices a trained
model with and the slim models narrow their freshly built layers with (torch only, no model registry)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from slimformer.families import Family, submodule


def unit_index(keep: torch.Tensor, width: int, chunks: int = 1, count: int = 0) -> torch.Tensor:
    """Row/column indices of the kept units, in their original order (slicing everything changes nothing);
    with `chunks` > 1 the rows stack that many blocks of `count` units and each block keeps the same units."""
    keep = torch.sort(keep).values
    index = (keep[:, None] * width + torch.arange(width)).reshape(-1)
    return torch.cat([index + block * count * width for block in range(chunks)])


def replace_linear(root: nn.Module, path: str, index: torch.Tensor, dim: int) -> None:
    """Swap the Linear at `path` under `root` for its rows (dim=0) or columns (dim=1) at `index`."""
    parent_path, _, name = path.rpartition(".")
    parent = submodule(root, parent_path)
    setattr(parent, name, prune_linear_layer(getattr(parent, name), index, dim=dim))


def slice_layer_heads(layer: nn.Module, family: Family, heads: torch.Tensor, head_size: int, count: int) -> None:
    """Keep the heads `heads` (of `count`) of one layer's attention and record the new head count on it (the
    slim models narrow their freshly built layers with this too)."""
    attention = submodule(layer, family.attention)
    rows = unit_index(heads, head_size, family.qkv_chunks, count)
    for name in family.qkv:
        replace_linear(attention, name, rows, dim=0)
    for name in family.extra_head_inputs:
        if hasattr(attention, name):
            replace_linear(attention, name, rows, dim=0)
    replace_linear(layer, family.attention_out, unit_index(heads, head_size), dim=1)
    if family.head_count_attr:
        setattr(attention, family.head_count_attr, len(heads))
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = len(heads) * head_size


def slice_shared_head_table(root: nn.Module, path: str, heads: torch.Tensor) -> None:
    """Keep the columns `heads` of the Embedding at `path` under `root`: a table every layer indexes by head
    (MPNet's relative-position bias), sliced when the same heads go from every layer."""
    parent_path, _, name = path.rpartition(".")
    parent = submodule(root, parent_path)
    table = getattr(parent, name)
    sliced = nn.Embedding(table.num_embeddings, len(heads), dtype=table.weight.dtype, device=table.weight.device)
    sliced.weight.data.copy_(table.weight.data[:, torch.sort(heads).values])
    setattr(parent, name, sliced)
