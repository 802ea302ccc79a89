"""The stage catalog: the built-in stages, registered in CLI order. Each stage module defines its own
:class:`~slimformer.envelope.Stage` (config class, function, one-line summary); the envelope and the registry live in
:mod:`slimformer.envelope` (re-exported here).

Adding a stage: write its config (a :class:`~slimformer.config.StageConfig` dataclass whose fields use
:func:`~slimformer.config.option`) and its function, then register it with one line
(``register_stage(Stage("name", Config, function, "summary"))``). It is then a CLI command and a recipe stage.
"""

from __future__ import annotations

from slimformer.distill import STAGE as DISTILL
from slimformer.envelope import STAGES, Stage, register_method, register_stage, run_stage, saved_settings
from slimformer.finetune import STAGE as FINETUNE
from slimformer.onnx.export import STAGE as EXPORT
from slimformer.onnx.optimize import STAGE as OPTIMIZE
from slimformer.onnx.quantize import STAGE as QUANTIZE
from slimformer.prune.stage import STAGE as PRUNE
from slimformer.search import STAGE as SEARCH
from slimformer.static_student import STAGE as STATIC

__all__ = ["STAGES", "Stage", "register_method", "register_stage", "run_stage", "saved_settings"]

for _stage in (FINETUNE, DISTILL, SEARCH, PRUNE, STATIC, EXPORT, OPTIMIZE, QUANTIZE):
    register_stage(_stage)
