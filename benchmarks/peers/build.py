"""Build the peers' models in `.venv-peers` (Optimum + transformers < 4.58; no slimformer), for run.py.

    python build.py teacher --base BASE_FOLDER --labels labels.json --output TEACHER
    python build.py optimum --teacher TEACHER --output OPTIMUM_DIR

`teacher`: a sequence classifier over the base model's body, with a random head of the labels' size (seed 0:
latency does not depend on the weights), saved with its tokenizer.

`optimum`: Optimum's documented INT8 paths for that teacher. It exports it (`ORTModelForSequenceClassification
.from_pretrained(..., export=True)`), quantizes that export dynamically with `AutoQuantizationConfig.avx2` and
`.avx512_vnni` (`is_static=False`, other settings at Optimum's defaults), and runs `ORTOptimizer` at O1 / O2 / O3
before the same two quantizations. Each variant is one folder under OPTIMUM_DIR. OPTIMUM_DIR/status.json lists every
variant with its folder and ONNX file, or the one-line error that stopped it (a failure does not stop the others).
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
    """Run `action() -> (folder, file)`, recording it (or its one-line error) in `status`."""
    tick = time.perf_counter()
    entry: dict[str, Any] = {"name": name, "recipe": recipe}
    try:
        folder, file = action()
        entry.update(ok=True, folder=str(folder), file=file)
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
    args = parser.parse_args()
    if args.command == "teacher":
        build_teacher(args.base, json.loads(args.labels.read_text()), args.output)
    else:
        status = build_optimum(args.teacher, args.output)
        (args.output / "status.json").write_text(json.dumps(status, indent=2) + "\n")


if __name__ == "__main__":
    main()
