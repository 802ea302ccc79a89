"""The book's PyTorch dynamic INT8 (`torch.ao.quantization.quantize_dynamic` on every Linear), kept as a
baseline. PyTorch cannot save that model portably, so the folder holds the fp32 checkpoint plus
`quantization.json`; :func:`slimformer.load` applies the same quantization when loading."""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.artifacts import Session, StageResult, write_json
from slimformer.models import save_checkpoint
from slimformer.onnx.ort_quantize import validation_report
from slimformer.onnx.runtime import parity, parity_texts
from slimformer.predictor import QUANTIZATION_FILE

if TYPE_CHECKING:
    from slimformer.data import DataSplits
    from slimformer.onnx.quantize import QuantizeConfig


def quantize_torch_dynamic(
    source: Path, folder: Path, config: QuantizeConfig, data: DataSplits | None, teacher: Path | None = None
) -> StageResult:
    import torch

    from slimformer.models import classifier_labels, load_classifier, load_tokenizer
    from slimformer.predictor import apply_torch_dynamic_quantization

    tokenizer = load_tokenizer(source)
    fp32 = load_classifier(source).eval()
    model_labels = classifier_labels(source) or []
    from slimformer.predictor import TorchPredictor

    texts, label_ids, text_source = parity_texts(data, config.max_eval_samples)
    reference_logits = TorchPredictor.from_model(fp32, tokenizer, config.max_length).predict_logits(texts, 64)
    fp32_bytes = _state_dict_bytes(fp32)
    started = time.perf_counter()
    quantized = apply_torch_dynamic_quantization(load_classifier(source).eval())  # as load() does
    quantize_seconds = time.perf_counter() - started
    quantized_logits = TorchPredictor.from_model(quantized, tokenizer, config.max_length).predict_logits(texts, 64)

    save_checkpoint(fp32, tokenizer, folder)
    marker = {
        "method": "torch-dynamic",
        "modules": ["torch.nn.Linear"],
        "dtype": "qint8",
        "engine": torch.backends.quantized.engine,
        "note": "weights are stored in fp32; slimformer.load applies "
        "torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8) when loading this folder",
    }
    write_json(folder / QUANTIZATION_FILE, marker)
    (folder / "README.md").write_text(
        "# PyTorch dynamic INT8 (baseline)\n\n"
        "`model.safetensors` holds the fp32 weights. A dynamically quantized PyTorch model can only be saved by "
        "pickling it, so instead `quantization.json` tells `slimformer.load` to apply "
        "`torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)` at load time "
        "(deterministic: the same int8 weights every time). Size on disk is therefore the fp32 size; "
        "`metrics.json` records the in-memory int8 state size.\n"
    )
    metrics: dict[str, Any] = {
        "method": "torch-dynamic",
        "source_model": str(source),
        "config": asdict(config),
        "quantization": marker,
        "quantized_linear_layers": sum(
            1 for m in quantized.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__
        ),
        "reference": "fp32 PyTorch model",
        "agreement": {**parity(reference_logits, quantized_logits), "texts": text_source},
        "quantize_seconds": round(quantize_seconds, 2),
        "fp32_state_mb": round(fp32_bytes / 1e6, 2),
        "int8_state_mb": round(_state_dict_bytes(quantized) / 1e6, 2),
        "size_on_disk": "fp32 checkpoint (quantized at load time)",
    }
    if data is not None and label_ids is not None:
        metrics.update(validation_report(data, label_ids, model_labels, reference_logits, quantized_logits))
    return StageResult(metrics, Session(config.max_length))


def _state_dict_bytes(model: Any) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
