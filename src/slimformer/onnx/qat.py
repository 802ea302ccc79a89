"""Quantization-aware training: every Linear sees int8 fake-quantized weights and activations (the rounding ORT's
dynamic quantization will apply) while the model trains through the one training loop, distilling from a
teacher. The trained fp32 checkpoint is written; export, optimize and `quantize --method dynamic` come next."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.artifacts import Session, StageResult
from slimformer.models import save_checkpoint
from slimformer.onnx.quantize import choose_reduce_range

if TYPE_CHECKING:
    from slimformer.data import DataSplits
    from slimformer.onnx.quantize import QuantizeConfig


def quantization_aware_training(
    source: Path, folder: Path, config: QuantizeConfig, data: DataSplits, teacher: Path | None
) -> StageResult:
    """Fine-tune `source` with fake-quantized Linears through the one training loop, distilling from `teacher`
    (default: `source` itself, fp32, before QAT); save the fp32 weights (fake-quant removed) with metrics."""
    from slimformer.evaluation import evaluate_model
    from slimformer.models import check_classifier_fits, load_classifier, load_tokenizer
    from slimformer.training import TrainingOptions, train_classifier

    teacher_path = teacher or source
    check_classifier_fits(teacher_path, data.labels)
    reduce_range, _ = choose_reduce_range(config.reduce_range)
    tokenizer = load_tokenizer(source)
    model = load_classifier(source, attn_implementation="eager")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed).in_label_order(labels)
    reference = evaluate_model(model, tokenizer, splits.validation, splits, config.max_length)
    options = TrainingOptions(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        max_length=config.max_length,
        seed=config.seed,
    )
    distillation = config.method_config().distillation(teacher_path)  # QATConfig: the soft-target options
    wrapped = _wrap_linears(model, reduce_range)
    result = train_classifier(model, tokenizer, splits, options, folder / "trainer", distillation)
    _unwrap_linears(model)
    save_checkpoint(model, tokenizer, folder)
    metrics = {
        "method": "qat",
        "source_model": str(source),
        "config": asdict(config),
        "qat": {
            "fake_quantized_linears": wrapped,
            "simulated": "int8 symmetric per-channel weights and uint8 per-batch activations of every Linear, "
            "as ORT dynamic quantization computes them; embedding quantization is not simulated",
            "loss": "distillation (slimformer.distillation)" if config.alpha < 1 else "cross-entropy",
            "teacher": str(teacher_path),
            "teacher_logits": result.teacher_logits,
            "train_seconds": result.train_seconds,
        },
        "reference": "fp32 PyTorch model before QAT",
        "reference_validation": reference,
        "validation": result.validation,  # with fake quantization, as ORT dynamic INT8 will compute it
        "test": result.test,
        "accuracy_delta_points": round(100 * (result.validation["accuracy"] - reference["accuracy"]), 3),
        "next": "fp32 weights trained for INT8: export, optimize, then quantize --method dynamic",
    }
    return StageResult(metrics, Session(config.max_length))


def _wrap_linears(model: Any, reduce_range: bool) -> int:
    """Replace every Linear (encoder, pooler, classifier: all of them become int8 in ORT) by a fake-quantized
    one; return how many."""
    import torch

    fake_quant_linear = _fake_quant_linear_class()
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, fake_quant_linear(child, reduce_range))
                count += 1
    return count


def _unwrap_linears(model: Any) -> None:
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child).__name__ == "FakeQuantLinear":
                setattr(module, child_name, child.linear)


def _fake_quant_linear_class() -> type:
    import torch
    import torch.nn.functional as F

    class FakeQuantLinear(torch.nn.Module):
        """A Linear whose weights and inputs are rounded to int8 in the forward pass (straight-through
        gradients), mirroring ORT dynamic quantization: symmetric per-output-channel int8 weights, asymmetric
        uint8 activations with the batch's own range."""

        def __init__(self, linear: torch.nn.Linear, reduce_range: bool) -> None:
            super().__init__()
            self.linear = linear
            self.weight_max = 63 if reduce_range else 127

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = self.linear.weight
            weight_scale = (weight.detach().abs().amax(dim=1) / self.weight_max).clamp(min=1e-8)
            zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
            weight_q = torch.fake_quantize_per_channel_affine(
                weight, weight_scale, zero, 0, -self.weight_max, self.weight_max
            )
            low = x.detach().min().clamp(max=0.0)
            high = x.detach().max().clamp(min=0.0)
            scale = ((high - low) / 255.0).clamp(min=1e-8).reshape(1).float()
            zero_point = torch.round(-low / scale).clamp(0, 255).to(torch.int32).reshape(1)
            x_q = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
            return F.linear(x_q, weight_q, self.linear.bias)

    return FakeQuantLinear
