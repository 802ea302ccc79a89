"""Recipes: one command runs finetune → distil → prune → export → optimize → quantize → benchmark → report.

A recipe is a YAML file (see `recipes/default.yaml`). Each stage reads the current model folder and writes a new
one under ``OUTPUT/stages/NN-<stage>-<key>/``, where the key hashes the stage's options, its input artefact and
the data. A finished stage is a folder with `metrics.json` (written atomically), so a re-run skips it; a stage
killed mid-way leaves only a `.tmp-*` folder, which the next run removes before redoing that stage.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from slimformer.artifacts import atomic_output_dir, read_metrics, write_json, write_metrics
from slimformer.envelope import is_finished, model_key, stage_key  # the cache keys: run and auto name folders by them
from slimformer.errors import ConfigError

QUICK_TRAIN_ROWS = 1500  # --quick: training rows
QUICK_EVAL_ROWS = 400  # --quick: validation and test rows
# steps of a run that are not model stages: they read the whole run (its teacher, its variants)
RUN_STEPS: dict[str, str] = {
    "finetune-teacher": "slimformer.finetune:FinetuneConfig",  # the finetune stage, skipped for a fitted model
    "benchmark-teacher": "slimformer.benchmark:BenchmarkConfig",
    "benchmark-all": "slimformer.benchmark:BenchmarkConfig",
    "report": "slimformer.report:ReportConfig",
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


def recipe_stage(kind: str, method: str | None = None, name: str | None = None) -> Any:
    """The packaged recipe's first stage of `kind` (and `method`, and variant `name`), or None."""
    stages = [
        s
        for s in load_recipe().stages
        if s.kind == kind and method in (None, s.options.get("method")) and name in (None, s.name)
    ]
    return stages[0] if stages else None


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
        if kind not in stage_kinds():
            raise ConfigError(f"{source}: stage {index} is unknown stage {kind!r} (valid: {', '.join(stage_kinds())})")
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


def stage_kinds() -> list[str]:
    """Every stage a recipe may name: the run-level steps and the registered stages."""
    from slimformer.stages import STAGES

    return [*RUN_STEPS, *STAGES]


def config_class(kind: str) -> type:
    """The config dataclass of a recipe stage."""
    import importlib

    from slimformer.stages import STAGES

    if kind in STAGES:
        return STAGES[kind].config
    module_name, _, class_name = RUN_STEPS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_config(stage: Stage, source: str = "", overrides: dict[str, Any] | None = None) -> Any:
    """The stage's config dataclass built from its options; unknown options and bad values are ConfigErrors."""
    from slimformer.config import build_config as build

    return build(config_class(stage.kind), {**stage.options, **(overrides or {})}, source or stage.kind)


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


def recipe_data(recipe: Recipe, quick: bool = False) -> Any:
    """The recipe's dataset (its seed orders any carving), cut to the `--quick` subset when asked."""
    from slimformer.data import load_data

    data = load_data(recipe.data, recipe.data_dir, recipe.text_column, recipe.label_column, seed=recipe.seed)
    return data.subset(QUICK_TRAIN_ROWS, QUICK_EVAL_ROWS, seed=recipe.seed) if quick else data


def run_recipe(recipe: Recipe, output: str | Path, quick: bool = False) -> dict[str, Any]:
    """Run every stage of `recipe` into `output`, reusing finished stages. Returns the run summary."""
    from rich.console import Console

    from slimformer.models import resolve_model_path

    console = Console()
    output = Path(output)
    (output / "stages").mkdir(parents=True, exist_ok=True)
    for leftover in (output / "stages").glob(".tmp-*"):  # a stage killed mid-way: redo it
        shutil.rmtree(leftover, ignore_errors=True)
    data = recipe_data(recipe, quick)
    model = resolve_model_path(recipe.model)
    _preflight(recipe, model)
    state = RunState(output=output, data=data, recipe=recipe, quick=quick, current=model)
    state.current_key = model_key(model)
    started = time.perf_counter()
    total = len(recipe.stages)
    for index, stage in enumerate(recipe.stages, start=1):
        elapsed = time.perf_counter() - started
        console.rule(f"[bold]stage {index}/{total}: {stage.variant}[/bold] · {_clock(elapsed)} elapsed")
        tick = time.perf_counter()
        runner = RUN_STEP_RUNNERS.get(stage.kind, _run_model_stage)
        cached = runner(state, stage, index, console)
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


def _preflight(recipe: Recipe, model: Path) -> None:
    """Stop in one line, before any training, when a stage cannot run on this model's encoder family."""
    from slimformer.families import preflight
    from slimformer.stages import STAGES

    for index, stage in enumerate(recipe.stages, start=1):
        if stage.kind in STAGES or stage.kind == "finetune-teacher":
            reason = preflight(model, stage.kind, build_config(stage))
            if reason:
                raise ConfigError(f"stage {index} ({stage.variant}) cannot run on {model}: {reason}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _stage_key(state: RunState, stage: Stage, config: Any, extra: str = "") -> str:
    return stage_key(stage.kind, config, state.current_key, state.teacher, state.data, quick=state.quick, extra=extra)


def _stage_config(state: RunState, stage: Stage) -> Any:
    """The stage's config with the recipe's seed and threads, shrunk by the config itself under --quick."""
    names = {f.name for f in dataclasses.fields(config_class(stage.kind))}
    overrides: dict[str, Any] = {}
    if "seed" in names and "seed" not in stage.options:
        overrides["seed"] = state.recipe.seed
    if "threads" in names and "threads" not in stage.options and state.recipe.threads:
        overrides["threads"] = state.recipe.threads
    config = build_config(stage, overrides=overrides)
    return config.quick() if state.quick else config


def _run_model_stage(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    """Run (or reuse) a registered stage on the current model; its model becomes the current one."""
    from slimformer.stages import STAGES

    teacher = _ensure_teacher(state)
    config = _stage_config(state, stage)
    uses_teacher = config.needs_teacher
    key = _stage_key(state, stage, config)  # the config (hence needs_teacher) and the teacher are in the key
    folder = state.output / "stages" / f"{index:02d}-{stage.kind}-{key}"
    cached = is_finished(folder)
    data = None if config.uses_data == "none" else state.data
    STAGES[stage.kind].run(state.current, folder, config, data, teacher if uses_teacher else None, reuse=True)
    model_folder = folder / config.model_subdir
    state.current = model_folder
    state.current_key = key
    state.variants.append(Variant(stage.variant, model_folder, stage.kind, read_metrics(model_folder)))
    return cached


def _finetune_teacher(state: RunState, stage: Stage, index: int, console: Any) -> bool:
    from slimformer.finetune import finetune
    from slimformer.models import head_covers

    if head_covers(state.current, state.data.labels):
        console.print(f"  {state.current} already classifies this dataset's labels: no fine-tuning needed")
        state.teacher = state.current
        return True
    config = _stage_config(state, stage)
    key = _stage_key(state, stage, config)
    folder = state.output / "stages" / f"{index:02d}-{stage.kind}-{key}"
    cached = is_finished(folder)
    if not cached:
        finetune(state.current, folder, config, state.data)
    state.current, state.current_key, state.teacher = folder, key, folder
    state.variants.append(Variant(stage.variant, folder, stage.kind, read_metrics(folder)))
    state.variants[-1].name = stage.name or "teacher"
    return cached


def _ensure_teacher(state: RunState) -> Path:
    from slimformer.models import check_classifier_fits

    if state.teacher is None:
        check_classifier_fits(state.current, state.data.labels)
        state.teacher = state.current
        state.variants.insert(0, Variant("teacher", state.current, "input", read_metrics(state.current)))
    return state.teacher


def _benchmark(state: RunState, stage: Stage, index: int, console: Any, models: list[Variant]) -> bool:
    from slimformer.benchmark import benchmark_models, print_table, write_plot

    config = _stage_config(state, stage)
    key = _stage_key(state, stage, config, extra=",".join(str(v.path) for v in models))
    folder = state.output / "stages" / f"{index:02d}-{stage.kind}-{key}"
    cached = is_finished(folder)
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
        final, state.output / "model", benchmark["report"], state.variants, config, state.recipe.threads, state.data
    )
    console.print(f"  report: {state.output / 'report.html'} · deployable model: {state.output / 'model'}")
    return False


RUN_STEP_RUNNERS: dict[str, Callable[[RunState, Stage, int, Any], bool]] = {
    "finetune-teacher": _finetune_teacher,
    "benchmark-teacher": _benchmark_teacher,
    "benchmark-all": _benchmark_all,
    "report": _report,
}
