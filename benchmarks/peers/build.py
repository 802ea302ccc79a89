"""Build the peers' models in `.venv-peers` (Optimum + transformers < 4.58; no slimformer), for run.py.

    python build.py teacher --base BASE_FOLDER --labels labels.json --output TEACHER
    python build.py optimum --teacher TEACHER --output OPTIMUM_DIR
    python build.py runtimes --teacher TEACHER --export OPTIMUM_DIR/export --texts texts.json --output RUNTIMES_DIR

`teacher`: a sequence classifier over the base model's body, with a random head of the labels' size (seed 0:
latency does not depend on the weights), saved with its tokenizer.

`optimum`: Optimum's documented INT8 paths for that teacher. It exports it (`ORTModelForSequenceClassification
.from_pretrained(..., export=True)`), quantizes that export dynamically with `AutoQuantizationConfig.avx2` and
`.avx512_vnni` (`is_static=False`, other settings at Optimum's defaults), and runs `ORTOptimizer` at O1 / O2 / O3
before the same two quantizations. Each variant is one folder under OPTIMUM_DIR. OPTIMUM_DIR/status.json lists every
variant with its folder and ONNX file, or the one-line error that stopped it (a failure does not stop the others).

`runtimes`: the same teacher in two other CPU inference runtimes, each through its documented INT8 path:
OpenVINO (Optimum's fp32 export read by `openvino`, then `nncf.quantize` with `ModelType.TRANSFORMER` on the
calibration texts: static INT8) and CTranslate2 (`TransformersConverter(..., quantization="int8")` of the encoder;
the classifier head, which CTranslate2 does not convert, is kept in `head.safetensors` and applied to its pooler
output in numpy). texts.json holds {"calibration": [...], "check": [...]}: each variant's top-1 agreement with the
fp32 PyTorch teacher on the check texts goes into RUNTIMES_DIR/status.json beside its folder (or its error).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

QUANTIZATIONS = ("avx2", "avx512_vnni")
LEVELS = ("O1", "O2", "O3")


def build_teacher(base: Path, labels: list[str], output: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(base).save_pretrained(output)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _step(status: list[dict[str, Any]], name: str, recipe: str, action: Any) -> dict[str, Any] | None:
    """Run `action() -> (folder, file[, extra fields])`, recording it (or its one-line error) in `status`."""
    tick = time.perf_counter()
    entry: dict[str, Any] = {"name": name, "recipe": recipe}
    try:
        folder, file, *extra = action()
        entry.update(ok=True, folder=str(folder), file=file, **(extra[0] if extra else {}))
    except Exception as exc:  # a peer's failure is a result to record, not a reason to stop
        entry.update(ok=False, error=_one_line(exc), traceback=traceback.format_exc(limit=4))
    entry["seconds"] = round(time.perf_counter() - tick, 1)
    status.append(entry)
    print(f"{name}: {'ok' if entry['ok'] else entry['error']} ({entry['seconds']} s)", flush=True)
    return entry if entry["ok"] else None


def build_optimum(teacher: Path, output: Path) -> list[dict[str, Any]]:
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig
    from transformers import AutoTokenizer

    output.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    status: list[dict[str, Any]] = []

    def export() -> tuple[Path, str]:
        folder = output / "export"
        ORTModelForSequenceClassification.from_pretrained(teacher, export=True).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder, "model.onnx"

    def optimize(source: tuple[Path, str], level: str) -> Any:
        def action() -> tuple[Path, str]:
            folder = output / level
            optimizer = ORTOptimizer.from_pretrained(source[0], file_names=[source[1]])
            optimizer.optimize(save_dir=folder, optimization_config=getattr(AutoOptimizationConfig, level)())
            tokenizer.save_pretrained(folder)
            return folder, _only_onnx(folder)

        return action

    def quantize(source: tuple[Path, str], name: str, preset: str) -> Any:
        def action() -> tuple[Path, str]:
            folder = output / name
            quantizer = ORTQuantizer.from_pretrained(source[0], file_name=source[1])
            config = getattr(AutoQuantizationConfig, preset)(is_static=False)
            quantizer.quantize(save_dir=folder, quantization_config=config)
            tokenizer.save_pretrained(folder)
            return folder, _only_onnx(folder, exclude=source[1])

        return action

    exported = _step(status, "optimum-export-fp32", "ORTModelForSequenceClassification export=True", export)
    if exported is None:
        return status
    sources = [("export", (Path(exported["folder"]), exported["file"]), "export")]
    for level in LEVELS:
        recipe = f"ORTOptimizer AutoOptimizationConfig.{level}()"
        optimized = _step(status, f"optimum-{level}-fp32", recipe, optimize(sources[0][1], level))
        if optimized is not None:
            sources.append((level, (Path(optimized["folder"]), optimized["file"]), recipe))
    for label, source, recipe in sources:
        for preset in QUANTIZATIONS:
            name = f"optimum-{label}-{preset}"
            quant_recipe = f"{recipe} + ORTQuantizer AutoQuantizationConfig.{preset}(is_static=False)"
            _step(status, name, quant_recipe, quantize(source, name, preset))
    return status


def build_runtimes(teacher: Path, export: Path, texts: dict[str, list[str]], output: Path) -> list[dict[str, Any]]:
    """OpenVINO + NNCF and CTranslate2 INT8 builds of a BERT-style `teacher` (pooler, then `classifier`), each
    checked against the fp32 teacher's top-1 on `texts["check"]`; see the module docstring."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    output.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    with torch.inference_mode():
        reference = [int(model(**tokenizer(text, return_tensors="pt")).logits.argmax()) for text in texts["check"]]
    status: list[dict[str, Any]] = []

    def features(text: str, names: list[str]) -> dict[str, Any]:
        """The tokenizer's arrays of `text` that the graph takes (`names`)."""
        encoded = tokenizer(text, return_tensors="np")
        return {name: np.asarray(encoded[name]) for name in names}

    def openvino() -> tuple[Path, str, dict[str, Any]]:
        import nncf
        import openvino as ov

        folder = output / "openvino-int8"
        core = ov.Core()
        fp32 = core.read_model(export / "model.onnx")
        names = [port.get_any_name() for port in fp32.inputs]
        calibration = nncf.Dataset(texts["calibration"], lambda text: features(text, names))
        int8 = nncf.quantize(
            fp32, calibration, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(texts["calibration"])
        )
        folder.mkdir(exist_ok=True)
        ov.save_model(int8, folder / "model.xml")
        tokenizer.save_pretrained(folder)
        compiled = core.compile_model(folder / "model.xml", "CPU")
        predicted = [int(compiled(features(text, names))[0].argmax()) for text in texts["check"]]
        return folder, "model.xml", _agreement(predicted, reference)

    def ctranslate2() -> tuple[Path, str, dict[str, Any]]:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
        from safetensors.numpy import save_file

        folder = output / "ctranslate2-int8"
        TransformersConverter(str(teacher)).convert(str(folder), quantization="int8", force=True)
        head = {
            "weight": model.classifier.weight.detach().numpy().T.copy(),
            "bias": model.classifier.bias.detach().numpy(),
        }
        save_file(head, folder / "head.safetensors")
        tokenizer.save_pretrained(folder)
        encoder = ctranslate2.Encoder(str(folder), device="cpu", compute_type="int8")
        predicted = []
        for text in texts["check"]:
            encoding = tokenizer(text)
            pooled = np.asarray(
                encoder.forward_batch(
                    [encoding["input_ids"]], token_type_ids=[encoding["token_type_ids"]]
                ).pooler_output
            )
            predicted.append(int((pooled @ head["weight"] + head["bias"]).argmax()))
        return folder, "model.bin", _agreement(predicted, reference)

    _step(
        status,
        "openvino-int8",
        "openvino read_model(Optimum's export) + nncf.quantize(ModelType.TRANSFORMER)",
        openvino,
    )
    _step(
        status, "ctranslate2-int8", "ctranslate2 TransformersConverter(quantization='int8') + numpy head", ctranslate2
    )
    return status


def _agreement(predicted: list[int], reference: list[int]) -> dict[str, Any]:
    agreeing = sum(p == r for p, r in zip(predicted, reference, strict=True))
    return {"top1_agreement_with_fp32_teacher": round(agreeing / len(reference), 4)}


def _only_onnx(folder: Path, exclude: str | None = None) -> str:
    """The one .onnx file Optimum wrote into `folder` (its name depends on the step: model_optimized.onnx, ...)."""
    files = sorted(p.name for p in folder.glob("*.onnx") if p.name != exclude)
    if len(files) != 1:
        raise RuntimeError(f"expected one new .onnx file in {folder}, found {files}")
    return files[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    teacher = sub.add_parser("teacher")
    teacher.add_argument("--base", required=True, type=Path)
    teacher.add_argument("--labels", required=True, type=Path, help="JSON list of label names")
    teacher.add_argument("--output", required=True, type=Path)
    optimum = sub.add_parser("optimum")
    optimum.add_argument("--teacher", required=True, type=Path)
    optimum.add_argument("--output", required=True, type=Path)
    runtimes = sub.add_parser("runtimes")
    runtimes.add_argument("--teacher", required=True, type=Path)
    runtimes.add_argument("--export", required=True, type=Path, help="Optimum's fp32 export folder")
    runtimes.add_argument("--texts", required=True, type=Path, help='JSON {"calibration": [...], "check": [...]}')
    runtimes.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    if args.command == "teacher":
        build_teacher(args.base, json.loads(args.labels.read_text()), args.output)
    else:
        if args.command == "optimum":
            status = build_optimum(args.teacher, args.output)
        else:
            status = build_runtimes(args.teacher, args.export, json.loads(args.texts.read_text()), args.output)
        (args.output / "status.json").write_text(json.dumps(status, indent=2) + "\n")


if __name__ == "__main__":
    main()
