"""`slimformer quantize`: INT8 models, each compared with its fp32 reference on the validation split.

Methods (``QuantizeConfig.method``):

- ``dynamic``: ONNX Runtime dynamic quantization (int8 weights, per-channel by default, embeddings included;
  activations quantized per batch at run time, the fused Attention as QAttention).
- ``static``: ONNX Runtime static quantization (:mod:`.static`), activation ranges calibrated on N training
  examples (MinMax, Entropy or Percentile); QDQ or QOperator format, U8S8 as x86 VNNI / AMX kernels want it.
- ``auto``: dynamic and static side by side (:mod:`.quantize_select`): both scored on validation and timed at
  batch 1 in interleaved rounds; the faster one within the accuracy tolerance is kept, and metrics.json says why.
- ``torch-dynamic``: the book's ``torch.ao.quantization.quantize_dynamic`` on the Linear layers, kept as a
  baseline. PyTorch cannot save that model portably (only pickling it would), so the folder holds the fp32
  checkpoint plus ``quantization.json``; :func:`slimformer.load` applies the same quantization when loading.
- ``qat``: quantization-aware fine-tuning — every encoder Linear sees int8 fake-quantized weights and
  activations (the rounding ORT's dynamic quantization will apply), trained with the distillation loss
  against an fp32 teacher (the model itself unless another is given) — then exported and quantized with
  ORT dynamic quantization using the same settings.

With ``max_accuracy_drop``, the ONNX methods become accuracy-aware (:mod:`.accuracy_aware`): when validation
accuracy falls by more than that many points, a sensitivity pass quantizes everything but one layer group at a
time, and the most sensitive groups are kept in fp32 (``nodes_to_exclude``) until the drop fits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from slimformer.artifacts import StageResult
from slimformer.config import QUICK_MAX_EPOCHS, MethodConfig, StageConfig, option, with_methods
from slimformer.cpu import VNNI_FLAGS, isa_flags
from slimformer.envelope import Stage, run_stage
from slimformer.errors import ConfigError, DataError, ModelError
from slimformer.onnx.runtime import ONNX_FILE
from slimformer.onnx.static import CALIBRATION_METHODS, QUANT_FORMATS, STATIC_OPS  # noqa: F401
from slimformer.threads import THREADS_HELP
from slimformer.training import SoftTargets

if TYPE_CHECKING:
    from slimformer.data import DataSplits

AUTO_TOLERANCE_POINTS = 0.5  # auto without --max-accuracy-drop: most validation accuracy a kept graph may lose


@dataclass
class QuantizeOptions(StageConfig):
    """What every quantization method shares."""

    uses_data: ClassVar[str] = "optional"  # dynamic without data: agreement on built-in sentences only
    accepts_teacher: ClassVar[bool] = True  # QAT distils from it

    per_channel: bool = option(True, "One weight scale per output channel (more accurate, about as fast)")
    reduce_range: bool | None = option(None, "7-bit weights; None: True exactly when the CPU lacks VNNI.")
    quantize_embeddings: bool = option(True, "Int8 word/position embeddings too (most of MiniLM's size)")
    word_embeddings_4bit: bool = option(
        False, "Store the word-embedding table 4-bit (ORT methods): half its bytes, unpacked once at session load."
    )
    max_accuracy_drop: float | None = option(None, "Accuracy-aware mode: allowed validation accuracy loss in points.")
    max_eval_samples: int | None = option(None, "Validation rows used for accuracy (None: all)")
    sensitivity_samples: int | None = option(1000, "Validation rows used by the per-layer sensitivity pass.")
    max_length: int | None = option(None, "Truncate texts to this many tokens (default: the source's, else 128).")
    threads: int | None = option(None, THREADS_HELP)
    max_train_samples: int | None = option(None, "Subsample the training split (QAT and calibration)")
    seed: int = option(42, "Random seed (QAT, calibration rows).")

    @property
    def needs_teacher(self) -> bool:
        return getattr(self, "method", "") == "qat" and getattr(self, "alpha", 1.0) < 1.0

    def quick(self) -> Any:
        method = getattr(self, "method", "")
        if method == "qat":
            return replace(self, epochs=min(self.epochs, QUICK_MAX_EPOCHS))
        return replace(self, latency_samples=min(self.latency_samples, 100)) if method == "auto" else self

    def check(self, data: Any) -> None:
        self.validate(data)

    def validate(self, data: Any = ...) -> None:
        """Option ranges; with `data` given (None included), also whether this method can run without data."""
        method = getattr(self, "method", "")
        if self.max_accuracy_drop is not None and not -100 <= self.max_accuracy_drop <= 100:
            raise ConfigError(f"max accuracy drop is in points (0-100), got {self.max_accuracy_drop}")
        if self.word_embeddings_4bit and method in ("torch-dynamic", "qat"):
            raise ConfigError(f"4-bit word embeddings are for the ONNX methods (dynamic, static, auto), not {method}")
        if self.max_accuracy_drop is not None and method == "torch-dynamic":
            raise ConfigError("accuracy-aware mode (--max-accuracy-drop) works on the ONNX methods, not torch-dynamic")
        if data is None and method == "auto":
            raise ConfigError(
                "method 'auto' needs a dataset (--data): static calibrates on its training split, and both "
                "candidates are scored on its validation split"
            )
        if data is None and (method in ("static", "qat") or self.max_accuracy_drop is not None):
            what = "accuracy-aware mode" if self.max_accuracy_drop is not None else f"method {method!r}"
            raise DataError(f"{what} needs a dataset (--data): it calibrates, trains or measures accuracy on it")


@dataclass
class DynamicConfig(MethodConfig):
    """ONNX Runtime dynamic INT8: int8 weights, activations quantized at run time (an ONNX folder)."""

    method: ClassVar[str] = "dynamic"


@dataclass
class StaticConfig(MethodConfig):
    """ONNX Runtime static INT8: activation ranges calibrated on training rows (an ONNX folder)."""

    method: ClassVar[str] = "static"
    calibration_samples: int = option(256, "Training examples the activation ranges are calibrated on.")
    calibration_method: str = option("minmax", "minmax | entropy | percentile.")
    quant_format: str = option("qdq", "qdq (Q/DQ pairs ORT fuses at load) | qoperator (QLinear ops).")
    dynamic_attention: bool = option(
        True, "Quantize the fused Attention and embeddings dynamically (ORT has no static form of them)."
    )

    def validate(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            methods = ", ".join(CALIBRATION_METHODS)
            raise ConfigError(f"unknown calibration method {self.calibration_method!r}; use one of {methods}")
        if self.quant_format not in QUANT_FORMATS:
            raise ConfigError(f"unknown quant format {self.quant_format!r}; use one of {', '.join(QUANT_FORMATS)}")
        if self.calibration_samples < 1:
            raise ConfigError("calibration samples must be >= 1")


@dataclass
class AutoQuantizeConfig(StaticConfig):
    """Dynamic and static side by side; the faster within the accuracy tolerance is kept."""

    method: ClassVar[str] = "auto"
    latency_samples: int = option(
        1000, "Batch-1 validation queries timed per candidate, interleaved (a few % apart needs ~1000)."
    )
    try_per_tensor: bool = option(
        True, "Also try one weight scale per matrix (faster at batch 1 on small shapes, sometimes less accurate)."
    )

    def validate(self) -> None:
        super().validate()
        if self.latency_samples < 1:
            raise ConfigError("latency samples must be >= 1")


@dataclass
class TorchDynamicConfig(MethodConfig):
    """PyTorch dynamic INT8 of the Linear layers (a PyTorch checkpoint; the book's path)."""

    method: ClassVar[str] = "torch-dynamic"
    takes_checkpoint: ClassVar[bool] = True


@dataclass
class QATConfig(SoftTargets, MethodConfig):
    """Quantization-aware training: a short fine-tune with fake-quantized Linears (a PyTorch checkpoint)."""

    method: ClassVar[str] = "qat"
    takes_checkpoint: ClassVar[bool] = True
    epochs: float = option(1.0, "Passes over the training split (a short fine-tune from the fp32 weights)")
    learning_rate: float = option(2e-5, "Small: QAT starts from trained weights.")
    batch_size: int = option(32, "Training batch size.")

    def validate(self) -> None:
        self.validate_soft_targets()
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("qat needs epochs > 0 and learning rate > 0")


# `slimformer quantize`'s config: the shared options, `method`, and each method's own fields (written once above)
QuantizeConfig = with_methods(
    QuantizeOptions,
    {  # each method's function: (source, folder, config, data, teacher) -> StageResult
        DynamicConfig: "slimformer.onnx.ort_quantize:quantize_with_ort",
        StaticConfig: "slimformer.onnx.ort_quantize:quantize_with_ort",
        AutoQuantizeConfig: "slimformer.onnx.quantize_select:quantize_auto_folder",
        TorchDynamicConfig: "slimformer.onnx.torch_dynamic:quantize_torch_dynamic",
        QATConfig: "slimformer.onnx.qat:quantization_aware_training",
    },
    "dynamic",
    "quantization",
)
QUANTIZATION_METHODS = tuple(method.method for method in QuantizeConfig.methods)  # the built-in ones, in order


def choose_reduce_range(requested: bool | None) -> tuple[bool, str]:
    """reduce_range and why: asked for explicitly, or True exactly when the CPU has no VNNI instructions."""
    if requested is not None:
        return requested, "set explicitly"
    found = sorted(set(VNNI_FLAGS) & isa_flags())
    if found:
        return False, (
            f"CPU has VNNI ({', '.join(found)}): 8-bit products accumulate without saturation, "
            "so full 8-bit weights (onnxruntime's guidance for U8S8 on VNNI CPUs)"
        )
    return True, (
        "CPU has no VNNI: 7-bit weights avoid int16 saturation of U8S8 products "
        "(onnxruntime's guidance for x86 CPUs without VNNI)"
    )


def quantize(
    model_dir: str | Path,
    output: str | Path,
    config: QuantizeConfig,
    data: DataSplits | None = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Quantize `model_dir` with ``config.method`` into `output` and return its metrics.

    dynamic / static / auto take an ONNX folder (give the optimized one: `slimformer export` then `optimize`)
    and write an INT8 ONNX folder (auto: the faster of dynamic and static within the accuracy tolerance,
    ``max_accuracy_drop`` else 0.5 points, both candidates in metrics.json). torch-dynamic takes a PyTorch
    checkpoint. qat fine-tunes a PyTorch checkpoint with fake-quantized Linears, distilling from `teacher`
    (default: the checkpoint itself), and writes the trained checkpoint: export, optimize and quantize it with
    `dynamic` next (a stage never runs another stage). `data` gives the validation split for accuracy and
    agreement (else built-in sentences, agreement only) and the training split for calibration / QAT.
    metrics.json records the method, settings (reduce_range and why), accuracy of the fp32 reference and the
    INT8 model, their delta in points, argmax agreement, sizes and, in accuracy-aware mode, the sensitivity
    pass and the layers kept in fp32.
    """
    return run_stage(STAGE, model_dir, output, config, data, teacher)


def quantize_model(
    source: Path, folder: Path, config: QuantizeConfig, data: DataSplits | None = None, teacher: Path | None = None
) -> StageResult:
    """The quantize stage's body: dispatch on the method config's type."""
    is_onnx = (source / ONNX_FILE).is_file()
    method = config.method_config()
    if method.takes_checkpoint and is_onnx:
        raise ModelError(f"method {config.method!r} takes a PyTorch checkpoint, and {source} is an ONNX folder")
    if not method.takes_checkpoint and not is_onnx:
        raise ModelError(
            f"method {config.method!r} takes an ONNX folder and {source} is a PyTorch checkpoint: run "
            "`slimformer export` and `slimformer optimize` on it first"
        )
    if not is_onnx:
        _check_classifier(source, data)
    return config.method_function()(source, folder, config, data, teacher)


# --- shared helpers ---------------------------------------------------------------------------------------


def _check_classifier(source: Path, data: DataSplits | None) -> None:
    from slimformer.models import check_classifier_fits, classifier_labels

    if classifier_labels(source) is None:
        raise ModelError(f"{source} is a base model without a classification head; fine-tune it first")
    if data is not None:
        check_classifier_fits(source, data.labels)


STAGE = Stage(
    "quantize",
    QuantizeConfig,
    quantize_model,
    "INT8: ORT dynamic or static (ONNX folder), torch-dynamic, or QAT (checkpoint); checked against fp32.",
)
