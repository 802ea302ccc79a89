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
    import slimformer

    assert callable(slimformer.load)
    assert issubclass(slimformer.DataError, slimformer.SlimformerError)
    assert set(slimformer.__all__) >= {"load", "SlimformerError"}
