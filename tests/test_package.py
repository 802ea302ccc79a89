"""The package stays lean: importing it or building the CLI must not pull torch, transformers or onnxruntime."""

from __future__ import annotations

import subprocess
import sys


def test_import_and_cli_do_not_load_heavy_libraries():
    code = (
        "import sys, slimformer, slimformer.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'datasets', 'optuna') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_public_api():
    """`slimformer.load(folder).predict(texts)`: one of the model's labels and its softmax probability per text."""
    from pathlib import Path

    import numpy as np

    import slimformer

    predictor = slimformer.load(Path(__file__).resolve().parent / "data" / "tiny_onnx", threads=1)
    texts = ["book a flight to paris", "what is my balance"]
    labels, scores = predictor.predict(texts)
    logits = predictor.predict_logits(texts)
    assert labels == [predictor.labels[i] for i in logits.argmax(axis=1)]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scores, probabilities.max(axis=1), rtol=1e-5)
    assert issubclass(slimformer.DataError, slimformer.SlimformerError)
    assert set(slimformer.__all__) >= {"load", "SlimformerError"}
