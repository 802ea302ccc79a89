"""Recipes: one command runs finetune → distil → prune → export → optimize → quantize → benchmark → report.

A recipe is a YAML file (see `recipes/default.yaml`). Each stage reads the current model folder and writes a new
one under ``OUTPUT/stages/NN-<stage>-<key>/``, where the key hashes the stage's options, its input artefact and
the data. A finished stage is a folder with `metrics.json` (written atomically), so a re-run skips it; a stage
killed mid-way leaves only a `.tmp-*` folder, which the next run removes before redoing that stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from slimformer.artifacts import atomic_output_dir, read_metrics, write_json, write_metrics
from slimformer.errors import ConfigError

QUICK_TRAIN_ROWS = 1500  # --quick: training rows
QUICK_EVAL_ROWS = 400  # --quick: validation and test rows
QUICK_MAX_EPOCHS = 1.0  # --quick: cap on every stage's epochs
QUICK_LATENCY_SAMPLES = 200


@dataclass(frozen=True)
class StageKind:
    """How a recipe stage maps to a stage function and its config dataclass (imported lazily)."""

    config: str  # "module:Class" of the options dataclass
    produces_model: bool  # does the stage output a new model variant?
    uses_teacher: bool = False  # is the fine-tuned teacher passed in (distillation, pruning, QAT)?


STAGE_KINDS: dict[str, StageKind] = {
    "finetune-teacher": StageKind("slimformer.finetune:FinetuneConfig", produces_model=True),
    "benchmark-teacher": StageKind("slimformer.benchmark:BenchmarkConfig", produces_model=False),
    "distill": StageKind("slimformer.distill:DistillConfig", produces_model=True, uses_teacher=True),
    "search": StageKind("slimformer.search:SearchConfig", produces_model=True, uses_teacher=True),
    "prune": StageKind("slimformer.prune:PruneConfig", produces_model=True, uses_teacher=True),
    "export": StageKind("slimformer.onnx:ExportConfig", produces_model=True),
    "optimize": StageKind("slimformer.onnx:OptimizeConfig", produces_model=True),
    "quantize": StageKind("slimformer.onnx:QuantizeConfig", produces_model=True, uses_teacher=True),
    "benchmark-all": StageKind("slimformer.benchmark:BenchmarkConfig", produces_model=False),
    "report": StageKind("slimformer.report:ReportConfig", produces_model=False),
}
RECIPE_KEYS = {"model", "data", "data_dir", "seed", "threads", "stages", "text_column", "label_column"}


@dataclass
class Stage:
    """One recipe entry: its kind, options, and an optional variant name for reports."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def variant(self) -> str:
        return self.name or self.kind


@dataclass
class Recipe:
    """A parsed, validated recipe."""

    stages: list[Stage]
    model: str = "default"
    data: str = "clinc150"
    data_dir: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    seed: int = 42
    threads: int | None = None
    source: str = ""


def default_recipe_path() -> Path:
    return Path(str(resources.files("slimformer") / "recipes" / "default.yaml"))


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file (the packaged default when `path` is None)."""
    import yaml

    path = Path(path) if path else default_recipe_path()
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    recipe = parse_recipe(raw, source=str(path))
    return recipe


def parse_recipe(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping: known keys, known stages, options that their config dataclass accepts."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with a 'stages' list")
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown recipe key {unknown[0]!r} (valid: {', '.join(sorted(RECIPE_KEYS))})")
    entries = raw.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list")
    stages = []
    for index, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            entry = {"stage": entry}
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"{source}: stage {index} must be a mapping with a 'stage' key")
        options = dict(entry)
        kind = str(options.pop("stage"))
        name = str(options.pop("name", "") or "")
        if kind not in STAGE_KINDS:
            raise ConfigError(f"{source}: stage {index} is unknown stage {kind!r} (valid: {', '.join(STAGE_KINDS)})")
        stage = Stage(kind=kind, options=options, name=name)
        build_config(stage, source=f"{source}: stage {index} ({kind})")  # validates option names and values
        stages.append(stage)
    recipe = Recipe(
        stages=stages,
        model=str(raw.get("model", "default")),
        data=str(raw.get("data", "clinc150")),
        data_dir=raw.get("data_dir"),
        text_column=str(raw.get("text_column", "text")),
        label_column=str(raw.get("label_column", "label")),
        seed=int(raw.get("seed", 42)),
        threads=raw.get("threads"),
        source=source,
    )
    return recipe


def config_class(kind: str) -> type:
    import importlib

    module_name, _, class_name = STAGE_KINDS[kind].config.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"stage {kind!r} is not available in this installation ({exc})") from exc


def build_config(stage: Stage, source: str = "", overrides: dict[str, Any] | None = None) -> Any:
    """The stage's config dataclass built from its options; unknown options and bad values are ConfigErrors."""
    cls = config_class(stage.kind)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    options = {**stage.options, **(overrides or {})}
    for key in options:
        if key not in fields:
            raise ConfigError(f"{source or stage.kind}: unknown option {key!r} (valid: {', '.join(fields)})")
    try:
        config = cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source or stage.kind}: {exc}") from exc
    if hasattr(config, "validate"):
        try:
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{source or stage.kind}: {exc}") from exc
    return config


# --- running --------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """A model produced by the run: its name, folder and the stage that made it."""

    name: str
    path: Path
    stage: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunState:
    output: Path
    data: Any
    recipe: Recipe
    quick: bool
    teacher: Path | None = None
    current: Path | None = None
    current_key: str = ""
    variants: list[Variant] = field(default_factory=list)
    benchmarks: dict[str, Any] = field(default_factory=dict)
    stage_log: list[dict[str, Any]] = field(default_factory=list)


def run_recipe(recipe: Recipe, output: str | Path, quick: bool = False) -> dict[str, Any]:
    """Run every stage of `recipe` into `output`, reusing finished stages. Returns the run summary."""
    from rich.console import Console

    from slimformer.data import load_data
    from slimformer.models import resolve_model_path

    console = Console()
    output = Path(output)
    (output / "stages").mkdir(parents=True, exist_ok=True)
    for leftover in (output / "stages").glob(".tmp-*"):  # a stage killed mid-way: redo it
        shutil.rmtree(leftover, ignore_errors=True)
    data = load_data(recipe.data, recipe.data_dir, recipe.text_column, recipe.label_column, seed=recipe.seed)
    if quick:
        data = data.subset(QUICK_TRAIN_ROWS, QUICK_EVAL_ROWS, seed=recipe.seed)
    model = resolve_model_path(recipe.model)
    state = RunState(output=output, data=data, recipe=recipe, quick=quick, current=model)
    state.current_key = _model_key(model)
    started = time.perf_counter()
    total = len(recipe.stages)
    for index, stage in enumerate(recipe.stages, start=1):
        elapsed = time.perf_counter() - started
        console.rule(f"[bold]stage {index}/{total}: {stage.variant}[/bold] · {_clock(elapsed)} elapsed")
        tick = time.perf_counter()
        cached = RUNNERS[stage.kind](state, stage, index, console)
        seconds = time.perf_counter() - tick
        state.stage_log.append(
            {"index": index, "stage": stage.kind, "name": stage.variant, "cached": cached, "seconds": round(seconds, 1)}
        )
        console.print(f"  {'reused cached result' if cached else 'done'} in {_clock(seconds)}")
    summary = {
        "recipe": recipe.source,
        "quick": quick,
        "data": data.name,
        "teacher": str(state.teacher) if state.teacher else None,
        "final_model": str(state.current),
        "variants": [{"name": v.name, "path": str(v.path), "stage": v.stage} for v in state.variants],
        "stages": state.stage_log,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(output / "run.json", summary)
    console.rule(f"[bold green]finished in {_clock(summary['seconds'])}[/bold green]")
    return summary


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _model_key(path: Path) -> str:
    """A content key for an input model folder: config + weight file sizes and mtimes (cheap, not a full hash)."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for file in sorted(path.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:12]


def _stage_key(state: RunState, stage: Stage, config: Any, extra: str = "") -> str:
    payload = {
        "kind": stage.kind,
        "config": dataclasses.asdict(config),
        "input": state.current_key,
        "teacher": _model_key(state.teacher) if state.teacher else None,
        "data": state.data.fingerprint,
        "quick": state.quick,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _stage_config(state: RunState, stage: Stage) -> Any:
    overrides: dict[str, Any] = {}
    cls = config_class(stage.kind)
    names = {f.name for f in dataclasses.fields(cls)}
    if "seed" in names and "seed" not in stage.options:
        overrides["seed"] = state.recipe.seed
    if "threads" in names and "threads" not in stage.options and state.recipe.threads:
        overrides["threads"] = state.recipe.threads
    if state.quick:
        for name in ("epochs", "max_epochs"):
            if name in names:
                value = stage.options.get(name, getattr(cls(), name) if _constructible(cls) else None)
                if value is not None:
                    overrides[name] = min(float(value), QUICK_MAX_EPOCHS)
        if "latency_samples" in names:
            overrides["latency_samples"] = min(int(stage.options.get("latency_samples", 1000)), QUICK_LATENCY_SAMPLES)
        if "trials" in names:
            overrides["trials"] = min(int(stage.options.get("trials", 8)), 2)
    if _wants_teacher(stage) and "teacher" in names and "teacher" not in stage.options and state.teacher:
        overrides["teacher"] = str(state.teacher)
    return build_config(stage, overrides=overrides)


def _wants_teacher(stage: Stage) -> bool:
    """Only stages that train against the teacher get it: vocabulary pruning and post-training quantization don't."""
    if not STAGE_KINDS[stage.kind].uses_teacher:
        return False
    if stage.kind == "prune":
        return stage.options.get("method") != "vocab"
    if stage.kind == "quantize":
        return stage.options.get("method") == "qat"
    return True


def _constructible(cls: type) -> bool:
    try:
        cls()
        return True
    except TypeError:
        return False


def _run_model_stage(
    state: RunState,
    stage: Stage,
    index: int,
    console: Any,
    call: Callable[[Path, Any], dict[str, Any]],
    result_subdir: str = "",
) -> bool:
    """Run (or reuse) a stage that writes a new model folder; make it the current model."""
    config = _stage_config(state, stage)
    key = _stage_key(state, stage, config)
    folder = state.output / "stages" / f"{index:02d}-{stage.kind}-{key}"
    cached = (folder / "metrics.json").is_file()
    if not cached:
        call(folder, config)
    model_folder = folder / result_subdir if result_subdir else folder
    state.current = model_folder
    state.current_key = key
    state.variants.append(Variant(stage.variant, model_folder, stage.kind, read_metrics(folder)))
    return cached


def _finetune_teacher(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.finetune import finetune
    from slimformer.models import classifier_labels

    labels = classifier_labels(state.current)
    if labels is not None and sorted(labels) == sorted(state.data.labels):
        console.print(f"  {state.current} already classifies this dataset's labels: no fine-tuning needed")
        state.teacher = state.current
        return True
    cached = _run_model_stage(
        state, stage, index, console, lambda out, cfg: finetune(state.current, out, cfg, state.data)
    )
    state.teacher = state.current
    state.variants[-1].name = stage.name or "teacher"
    return cached


def _ensure_teacher(state: RunState) -> Path:
    from slimformer.models import check_classifier_fits

    if state.teacher is None:
        check_classifier_fits(state.current, state.data.labels)
        state.teacher = state.current
        state.variants.insert(0, Variant("teacher", state.current, "input", read_metrics(state.current)))
    return state.teacher


def _distill(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.distill import distill

    teacher = _ensure_teacher(state)
    return _run_model_stage(state, stage, index, console, lambda out, cfg: distill(teacher, out, cfg, state.data))


def _search(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.search import search

    teacher = _ensure_teacher(state)
    return _run_model_stage(
        state, stage, index, console, lambda out, cfg: search(teacher, out, cfg, state.data), "best_model"
    )


def _prune(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.prune import prune

    _ensure_teacher(state)
    source = state.current
    return _run_model_stage(state, stage, index, console, lambda out, cfg: prune(source, out, cfg, state.data))


def _export(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.onnx import export_onnx

    _ensure_teacher(state)
    source = state.current
    return _run_model_stage(
        state, stage, index, console, lambda out, cfg: export_onnx(source, out, cfg, data=state.data)
    )


def _optimize(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.onnx import optimize_onnx

    source = state.current
    return _run_model_stage(state, stage, index, console, lambda out, cfg: optimize_onnx(source, out, cfg))


def _quantize(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.onnx import quantize

    _ensure_teacher(state)
    source = state.current
    return _run_model_stage(state, stage, index, console, lambda out, cfg: quantize(source, out, cfg, data=state.data))


def _benchmark(state: RunState, stage: Stage, index: int, console: Any, models: list[Variant]) -> bool:
    from slimformer.benchmark import benchmark_models, print_table, write_plot

    config = _stage_config(state, stage)
    key = _stage_key(state, stage, config, extra=",".join(str(v.path) for v in models))
    folder = state.output / "stages" / f"{index:02d}-{stage.kind}-{key}"
    cached = (folder / "metrics.json").is_file()
    if not cached:
        with atomic_output_dir(folder) as tmp:
            report = benchmark_models([v.path for v in models], state.data, config)
            for variant, result in zip(models, report["results"], strict=True):
                result["model"] = variant.name
                result["stage"] = variant.stage
            write_json(tmp / "benchmark.json", report)
            write_plot(report["results"], tmp / "accuracy_vs_latency.png")
            write_metrics(tmp, {"stage": stage.kind, "models": [v.name for v in models]})
    report = json.loads((folder / "benchmark.json").read_text())
    print_table(report)
    state.benchmarks[stage.kind] = {"folder": str(folder), "report": report}
    return cached


def _benchmark_teacher(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    teacher = _ensure_teacher(state)
    return _benchmark(state, stage, index, console, [Variant("teacher", teacher, "teacher")])


def _benchmark_all(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    teacher = _ensure_teacher(state)
    variants = [v for v in state.variants if v.path != teacher]
    return _benchmark(state, stage, index, console, [Variant("teacher", teacher, "teacher"), *variants])


def _report(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.report import write_deployable_model, write_report

    config = _stage_config(state, stage)
    benchmark = state.benchmarks.get("benchmark-all") or state.benchmarks.get("benchmark-teacher")
    if benchmark is None:
        raise ConfigError("the report stage needs a benchmark-all (or benchmark-teacher) stage before it")
    final = state.current
    write_report(state.output, benchmark["report"], state.variants, config)
    write_deployable_model(
        final, state.output / "model", benchmark["report"], state.variants, config, threads=state.recipe.threads
    )
    console.print(f"  report: {state.output / 'report.html'} · deployable model: {state.output / 'model'}")
    return False


RUNNERS: dict[str, Callable[[RunState, Stage, int, Any], bool]] = {
    "finetune-teacher": _finetune_teacher,
    "benchmark-teacher": _benchmark_teacher,
    "distill": _distill,
    "search": _search,
    "prune": _prune,
    "export": _export,
    "optimize": _optimize,
    "quantize": _quantize,
    "benchmark-all": _benchmark_all,
    "report": _report,
}
