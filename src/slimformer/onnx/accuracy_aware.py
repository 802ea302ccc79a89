"""Accuracy-aware INT8 (`--max-accuracy-drop`): a sensitivity pass quantizes everything but one layer group at a
time, and the most sensitive groups stay in fp32 (`nodes_to_exclude`) until the validation drop fits."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.onnx.runtime import EMBEDDING_OPS

if TYPE_CHECKING:
    from slimformer.onnx.ort_quantize import _Evaluation
    from slimformer.onnx.quantize import QuantizeConfig


def layer_groups(model_path: str | Path, op_types: tuple[str, ...]) -> dict[str, list[str]]:
    """The nodes quantization would touch, grouped by transformer layer ("embeddings", "layer.N", "head").

    Fused Attention nodes are numbered in graph order (one per layer); other nodes carry the layer in the
    module path the TorchScript exporter gives them (``/bert/encoder/layer.3/...``).
    """
    import onnx

    graph = onnx.load(str(model_path)).graph
    weights = {init.name for init in graph.initializer if len(init.dims) >= 2}
    groups: dict[str, list[str]] = {}
    attention_index = 0
    for node in graph.node:
        if node.op_type not in op_types or not any(name in weights for name in node.input):
            continue  # e.g. a Gather of an activation: nothing to quantize
        if node.op_type in ("Attention", "MultiHeadAttention"):
            group = f"layer.{attention_index}"
            attention_index += 1
        elif match := re.search(r"layer\.(\d+)", node.name):
            group = f"layer.{match.group(1)}"
        elif node.op_type in EMBEDDING_OPS or "embedding" in node.name.lower():
            group = "embeddings"
        else:
            group = "head"
        groups.setdefault(group, []).append(node.name)
    return groups


def fit_accuracy_budget(
    fp32_model: Path,
    all_quantized: Path,
    work: Path,
    config: QuantizeConfig,
    op_types: tuple[str, ...],
    evaluation: _Evaluation,
    sensitivity_set: _Evaluation,
    reference_accuracy: float | None,
    quantize_excluding: Callable[[list[str], Path], Path],
) -> tuple[Path, dict[str, Any]]:
    """Keep the most sensitive layer groups in fp32 until the accuracy drop is within the budget."""
    assert reference_accuracy is not None and config.max_accuracy_drop is not None

    def accuracy_of(path: Path, on: _Evaluation) -> float:
        return on.accuracy(on.logits(path)) or 0.0

    def drop_points(accuracy: float) -> float:
        return round(100 * (reference_accuracy - accuracy), 3)

    accuracy = accuracy_of(all_quantized, evaluation)
    report: dict[str, Any] = {
        "max_accuracy_drop": config.max_accuracy_drop,
        "reference_accuracy": reference_accuracy,
        "all_quantized_accuracy": accuracy,
        "all_quantized_drop_points": drop_points(accuracy),
        "sensitivity": [],
        "kept_fp32": [],
        "nodes_kept_fp32": [],
    }
    if drop_points(accuracy) <= config.max_accuracy_drop:
        report.update(fits=True, final_accuracy=accuracy, final_drop_points=drop_points(accuracy))
        return all_quantized, report

    # sensitivity: quantize everything but one group; the accuracy that buys back is that group's cost
    groups = layer_groups(fp32_model, op_types)
    baseline = accuracy_of(all_quantized, sensitivity_set)
    for index, (group, nodes) in enumerate(groups.items()):
        candidate = quantize_excluding(nodes, work / f"sensitivity-{index}.onnx")
        gain = accuracy_of(candidate, sensitivity_set) - baseline
        report["sensitivity"].append(
            {"group": group, "nodes": len(nodes), "accuracy_gain_points": round(100 * gain, 3)}
        )
        candidate.unlink()
    ranked = sorted(report["sensitivity"], key=lambda entry: -entry["accuracy_gain_points"])

    best, excluded = all_quantized, []
    for step, entry in enumerate(ranked):
        excluded += groups[entry["group"]]
        report["kept_fp32"].append(entry["group"])
        best = quantize_excluding(list(excluded), work / f"kept-{step}.onnx")
        accuracy = accuracy_of(best, evaluation)
        if drop_points(accuracy) <= config.max_accuracy_drop:
            break
    report.update(
        nodes_kept_fp32=excluded,
        fits=drop_points(accuracy) <= config.max_accuracy_drop,
        final_accuracy=accuracy,
        final_drop_points=drop_points(accuracy),
    )
    if not report["fits"]:
        warnings.warn(
            f"accuracy drop {drop_points(accuracy)} points still exceeds {config.max_accuracy_drop} with every "
            "layer group in fp32",
            stacklevel=3,
        )
    return best, report
