"""The stage registry: every stage is one config class and one function, registered here once.

A stage function has the contract ``run(source, output, config, data, teacher=None) -> metrics``: it reads the
model folder `source`, writes the artefact folder `output` atomically (with `metrics.json` and `session.json`)
and returns the metrics. The CLI (:mod:`slimformer.commands.stages`), the recipe pipeline
(:mod:`slimformer.pipeline`) and the search compose these same functions; what is special about a stage lives
on its config class (``needs_teacher``, ``quick()``, ``uses_data``, ``model_subdir``).

Adding a stage: write its config (a :class:`~slimformer.config.StageConfig` dataclass whose fields use
:func:`~slimformer.config.option`) and its function, then add one :class:`Stage` line below (or call
:func:`register_stage`). It is then a CLI command and a recipe stage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimformer.distill import DistillConfig
from slimformer.finetune import FinetuneConfig
from slimformer.onnx.export import ExportConfig
from slimformer.onnx.optimize import OptimizeConfig
from slimformer.onnx.quantize import QuantizeConfig
from slimformer.prune.stage import PruneConfig
from slimformer.search import SearchConfig


@dataclass(frozen=True)
class Stage:
    """One registered stage: its name (the CLI command and recipe key), config class and function."""

    name: str
    config: type
    function: str | Callable[..., dict[str, Any]]  # "module:function" (imported when run) or the function
    summary: str  # one line for `--help`
    accepts_teacher: bool = False  # can it distil from a teacher (the CLI then offers --teacher)?

    @property
    def run(self) -> Callable[..., dict[str, Any]]:
        """The stage function (imported on first use, so the CLI starts without torch)."""
        if callable(self.function):
            return self.function
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add `stage` to the registry (the CLI and recipes pick it up); returns it."""
    STAGES[stage.name] = stage
    return stage


for _stage in (
    Stage("finetune", FinetuneConfig, "slimformer.finetune:finetune", "Fine-tune a checkpoint into a classifier."),
    Stage(
        "distill",
        DistillConfig,
        "slimformer.distill:distill",
        "Distil a student (from the source's own layers, or a checkpoint) from the teacher's cached logits.",
        accepts_teacher=True,
    ),
    Stage(
        "search",
        SearchConfig,
        "slimformer.search:search",
        "Search distillation settings with Optuna (resumable); the best student lands in OUTPUT/best_model.",
        accepts_teacher=True,
    ),
    Stage(
        "prune",
        PruneConfig,
        "slimformer.prune.stage:prune",
        "Prune a classifier: magnitude or movement (cubic schedule), structured (heads, FFN neurons), vocabulary.",
        accepts_teacher=True,
    ),
    Stage("export", ExportConfig, "slimformer.onnx.export:export_onnx", "Export a classifier to ONNX, parity-checked."),
    Stage(
        "optimize",
        OptimizeConfig,
        "slimformer.onnx.optimize:optimize_onnx",
        "Fuse an exported graph with ONNX Runtime's transformer optimizer; fusion counts recorded.",
    ),
    Stage(
        "quantize",
        QuantizeConfig,
        "slimformer.onnx.quantize:quantize",
        "INT8: ORT dynamic or static (ONNX folder), torch-dynamic, or QAT (checkpoint); checked against fp32.",
        accepts_teacher=True,
    ),
):
    register_stage(_stage)
