"""Pruning: unstructured magnitude and movement pruning on the cubic schedule, structured FFN pruning,
compressed sparse storage and vocabulary pruning. Importing this package stays cheap (torch loads lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimformer.prune.schedule import CubicSchedule, cubic_sparsity

if TYPE_CHECKING:
    from slimformer.prune.stage import PruneConfig

__all__ = [
    "CubicSchedule",
    "PruneConfig",
    "cubic_sparsity",
    "load_sparse",
    "prune",
    "prune_sweep",
    "prune_vocabulary",
    "save_sparse",
]

_LAZY = {
    "PruneConfig": "slimformer.prune.stage",
    "prune": "slimformer.prune.stage",
    "prune_sweep": "slimformer.prune.stage",
    "save_sparse": "slimformer.prune.sparse_storage",
    "load_sparse": "slimformer.prune.sparse_storage",
    "prune_vocabulary": "slimformer.prune.vocab",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimformer.prune' has no attribute {name!r}")
