"""ONNX export, ONNX Runtime graph optimization and INT8 quantization, each checked against its reference.

Every function here is a stage: it reads a model folder, writes a self-contained folder through
:func:`slimformer.artifacts.atomic_output_dir` (``model.onnx`` + tokenizer + ``config.json`` with id2label +
``session.json`` + ``metrics.json``) that :func:`slimformer.load` and ``onnxruntime.InferenceSession`` open,
and returns its metrics. Importing this package is cheap: torch and onnxruntime load inside the functions.
"""

from __future__ import annotations

from slimformer.onnx.export import ExportConfig, export_onnx
from slimformer.onnx.optimize import OptimizeConfig, optimize_onnx
from slimformer.onnx.quantize import QUANTIZATION_METHODS, QuantizeConfig, quantize

__all__ = [
    "QUANTIZATION_METHODS",
    "ExportConfig",
    "OptimizeConfig",
    "QuantizeConfig",
    "export_onnx",
    "optimize_onnx",
    "quantize",
]
