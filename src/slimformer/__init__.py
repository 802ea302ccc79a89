"""slimformer: make fine-tuned transformer text classifiers fast and small for CPU production.

Importing the package is cheap; torch, transformers and onnxruntime load when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimformer.errors import ConfigError, DataError, ModelError, SlimformerError

if TYPE_CHECKING:
    from slimformer.predictor import Predictor

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "ModelError", "SlimformerError", "__version__", "load"]


def load(path: Any, threads: int | None = None, max_length: int | None = None) -> Predictor:
    """Load a model folder (PyTorch or ONNX) as a predictor: ``predict(texts) -> (labels, scores)``."""
    from slimformer.predictor import load as load_predictor

    return load_predictor(path, threads=threads, max_length=max_length)
