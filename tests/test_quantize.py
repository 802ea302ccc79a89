"""INT8 quantization: every method gives a loadable model that agrees with fp32; accuracy-aware mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from slimformer.errors import ConfigError, DataError, ModelError


def _export_test_module():
    # the tiny trained model and its exported / optimized folders are the export tests' fixtures
    path = Path(__file__).with_name("test_onnx_export.py")
    spec = importlib.util.spec_from_file_location("_onnx_export_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _export_test_module()
trained_tiny_dir = _fixtures.trained_tiny_dir
exported_dir = _fixtures.exported_dir
optimized_dir = _fixtures.optimized_dir
one_torch_thread = _fixtures.one_torch_thread


def _agreement_with_fp32(folder: Path, reference: Path, texts: list[str]) -> float:
    from slimformer import load

    quantized, fp32 = load(folder, threads=1), load(reference, threads=1)
    return float(np.mean(np.array(quantized.predict(texts)[0]) == np.array(fp32.predict(texts)[0])))


@pytest.mark.parametrize(
    ("method", "source", "quantized_op"),
    [
        ("dynamic", "optimized", "MatMulInteger"),
        ("static", "optimized", "QuantizeLinear"),
        ("torch-dynamic", "checkpoint", None),
    ],
)
def test_each_method_gives_a_loadable_model_that_agrees_with_fp32(
    method: str,
    source: str,
    quantized_op: str | None,
    trained_tiny_dir: Path,
    optimized_dir: Path,
    clinc_slice,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnx
    import onnxruntime as ort

    from slimformer.data import column
    from slimformer.onnx import QuantizeConfig, quantize

    monkeypatch.setenv("SLIMFORMER_CACHE_DIR", str(tmp_path / "cache"))  # qat's teacher logits
    config = QuantizeConfig(method=method, threads=1, calibration_samples=32, epochs=1, max_train_samples=64)
    model_dir = optimized_dir if source == "optimized" else trained_tiny_dir
    metrics = quantize(model_dir, tmp_path / "int8", config, clinc_slice)

    assert metrics["stage"] == "quantize" and metrics["method"] == method
    assert json.loads((tmp_path / "int8" / "metrics.json").read_text())["method"] == method
    texts = column(clinc_slice.validation, "text") + column(clinc_slice.test, "text")
    assert _agreement_with_fp32(tmp_path / "int8", trained_tiny_dir, texts) >= 0.75
    assert metrics["agreement"]["argmax_agreement"] >= 0.75
    assert metrics["agreement"]["examples"] == len(clinc_slice.validation)
    assert abs(metrics["accuracy_delta_points"]) <= 25
    assert metrics["validation"]["accuracy"] == pytest.approx(
        metrics["reference_validation"]["accuracy"] + metrics["accuracy_delta_points"] / 100, abs=1e-3
    )
    if quantized_op is None:  # torch-dynamic: fp32 checkpoint + marker, quantized when loaded
        from slimformer import load

        assert json.loads((tmp_path / "int8" / "quantization.json").read_text())["method"] == "torch-dynamic"
        assert load(tmp_path / "int8").settings()["quantization"] == "torch-dynamic"
        assert metrics["quantized_linear_layers"] == 2 * 6 + 2  # 6 per layer + pooler + classifier
        assert metrics["int8_state_mb"] < metrics["fp32_state_mb"]
        return
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    assert any(node.op_type == quantized_op for node in graph.node)
    assert metrics["size_mb"] < metrics["fp32_size_mb"]
    session = ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feed)[0].shape == (2, len(clinc_slice.labels))
    assert json.loads((tmp_path / "int8" / "session.json").read_text())["threads"] == 1
    if method == "static":
        assert metrics["calibration"] == {"method": "minmax", "samples": 32, "texts": "training split"}


def test_static_quantization_takes_relative_paths(
    optimized_dir: Path, clinc_slice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the shape-inference step changes directory, so relative folders must be resolved first."""
    import shutil

    from slimformer.onnx import QuantizeConfig, quantize

    shutil.copytree(optimized_dir, tmp_path / "opt")
    monkeypatch.chdir(tmp_path)
    config = QuantizeConfig(method="static", threads=1, calibration_samples=16)
    metrics = quantize(Path("opt"), Path("int8"), config, clinc_slice)
    assert metrics["method"] == "static" and (tmp_path / "int8" / "model.onnx").is_file()


def test_dynamic_chooses_reduce_range_from_the_cpu(optimized_dir: Path, tmp_path: Path) -> None:
    from slimformer.cpu import isa_flags
    from slimformer.onnx import QuantizeConfig, quantize
    from slimformer.onnx.quantize import VNNI_FLAGS

    metrics = quantize(optimized_dir, tmp_path / "int8", QuantizeConfig(threads=1))
    has_vnni = bool(set(VNNI_FLAGS) & isa_flags())
    assert metrics["reduce_range"] is (not has_vnni)
    assert ("has VNNI" if has_vnni else "no VNNI") in metrics["reduce_range_reason"]
    assert metrics["agreement"]["texts"] == "built-in sentences" and "validation" not in metrics
    assert metrics["embeddings_quantized"] and metrics["quantized_nodes"].get("QEmbedLayerNormalization") == 1
    explicit = quantize(optimized_dir, tmp_path / "explicit", QuantizeConfig(threads=1, reduce_range=True))
    assert explicit["reduce_range"] is True and explicit["reduce_range_reason"] == "set explicitly"


def test_accuracy_aware_keeps_layers_in_fp32_for_an_impossible_tolerance(
    optimized_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    from slimformer.onnx import QuantizeConfig, quantize
    from slimformer.onnx.accuracy_aware import layer_groups
    from slimformer.onnx.quantize import DYNAMIC_OPS

    groups = layer_groups(optimized_dir / "model.onnx", DYNAMIC_OPS)
    assert list(groups) == ["embeddings", "layer.0", "layer.1", "head"]
    assert len(groups["head"]) == 2  # pooler and classifier
    assert groups["layer.1"][0] == "Attention_1" and len(groups["layer.0"]) == 4  # Attention + 3 MatMuls

    # -100 points: the INT8 model would have to be 100 points *more* accurate; nothing can satisfy that
    config = QuantizeConfig(threads=1, max_accuracy_drop=-100.0)
    with pytest.warns(UserWarning, match="still exceeds"):
        metrics = quantize(optimized_dir, tmp_path / "int8", config, clinc_slice)
    search = metrics["accuracy_aware"]
    assert search["fits"] is False
    assert [entry["group"] for entry in search["sensitivity"]] == list(groups)
    assert sorted(search["kept_fp32"]) == sorted(groups)
    assert sorted(search["nodes_kept_fp32"]) == sorted(n for nodes in groups.values() for n in nodes)
    assert metrics["quantized_nodes"] == {}  # every quantizable node stayed fp32

    # a generous budget fits at once and keeps everything quantized
    relaxed = quantize(
        optimized_dir, tmp_path / "relaxed", QuantizeConfig(threads=1, max_accuracy_drop=100.0), clinc_slice
    )
    assert relaxed["accuracy_aware"]["fits"] is True and relaxed["accuracy_aware"]["kept_fp32"] == []
    assert relaxed["quantized_nodes"]["QAttention"] == 2


def test_quantize_rejects_bad_requests(
    optimized_dir: Path, trained_tiny_dir: Path, tiny_base_dir: Path, tmp_path: Path
) -> None:
    from slimformer.onnx import QuantizeConfig, quantize

    with pytest.raises(ConfigError, match="unknown quantization method"):
        quantize(optimized_dir, tmp_path / "a", QuantizeConfig(method="int4"))
    with pytest.raises(DataError, match="needs a dataset"):
        quantize(optimized_dir, tmp_path / "b", QuantizeConfig(method="static"))
    with pytest.raises(ModelError, match="takes a PyTorch checkpoint"):
        quantize(optimized_dir, tmp_path / "c", QuantizeConfig(method="torch-dynamic"))
    with pytest.raises(ModelError, match="base model"):
        quantize(tiny_base_dir, tmp_path / "d", QuantizeConfig(method="torch-dynamic"))
    with pytest.raises(ConfigError, match="calibration method"):
        quantize(optimized_dir, tmp_path / "e", QuantizeConfig(calibration_method="kl"))
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_cli_quantize(exported_dir: Path, clinc_slice_dir: Path, tmp_path: Path, capsys) -> None:
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "quantize",
                str(exported_dir),
                "--output",
                str(tmp_path / "int8"),
                "--method",
                "static",
                "--calibration-samples",
                "16",
                "--calibration-method",
                "percentile",
                "--no-per-channel",
                "--data",
                str(clinc_slice_dir),
                "--threads",
                "1",
            ]
        )
    assert exit_info.value.code == 0
    metrics = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    assert metrics["calibration"]["method"] == "percentile" and metrics["per_channel"] is False
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(exported_dir), "--output", str(tmp_path / "bad"), "--method", "qat", "--data", "none"])
    assert exit_info.value.code == 2
    assert "needs a dataset" in capsys.readouterr().err


def test_qat_writes_a_checkpoint_trained_for_int8(trained_tiny_dir, clinc_slice, tmp_path, monkeypatch) -> None:
    """QAT trains with fake-quantized Linears and writes the checkpoint: export/optimize/quantize come next."""
    from slimformer.models import load_classifier
    from slimformer.onnx import QuantizeConfig, quantize

    monkeypatch.setenv("SLIMFORMER_CACHE_DIR", str(tmp_path / "cache"))
    config = QuantizeConfig(method="qat", threads=1, epochs=1, max_train_samples=64)
    metrics = quantize(trained_tiny_dir, tmp_path / "qat", config, clinc_slice)
    assert metrics["qat"]["fake_quantized_linears"] == 2 * 6 + 2  # + pooler and classifier
    assert metrics["qat"]["loss"].startswith("distillation") and metrics["qat"]["teacher"] == str(trained_tiny_dir)
    assert metrics["accuracy_delta_points"] == pytest.approx(
        100 * (metrics["validation"]["accuracy"] - metrics["reference_validation"]["accuracy"]), abs=1e-3
    )
    model = load_classifier(tmp_path / "qat")
    assert all(type(m).__name__ != "FakeQuantLinear" for m in model.modules())  # fake quantization removed
