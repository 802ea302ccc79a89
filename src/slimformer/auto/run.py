"""`slimformer auto`: fine-tune the teacher if needed, run (or join, or resume) the study on one or many
workers, then select, benchmark on test once, report and write `OUTPUT/model/`.

Files: `OUTPUT/study.db` (the default storage), `OUTPUT/work/` (shared stage artefacts and teacher logits;
`--work-dir` puts them on a path every worker sees), `OUTPUT/report.md|html`, `OUTPUT/auto.json`,
`OUTPUT/model/` (only when a candidate met the budget on validation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.auto.config import AutoConfig
from slimformer.errors import ConfigError, SlimformerError
from slimformer.timing import is_busy

SMALL_VALIDATION_ROWS = 2000  # below it, the report warns that gaps under a point are noise


class BudgetNotMet(SlimformerError):
    """No candidate met the budget (the report shows the closest)."""


@dataclass(frozen=True)
class DataSpec:
    """How to load the data (every worker process loads it itself)."""

    name: str = "clinc150"
    data_dir: str | None = None
    text_column: str = "text"
    label_column: str = "label"


def auto(model: str, output: str | Path, config: AutoConfig, data: DataSpec, quick: bool = False) -> dict[str, Any]:
    """Search the compression space for the most accurate model within `config`'s budget. Returns auto.json."""
    from slimformer.artifacts import check_output_dir
    from slimformer.auto.candidate import max_student_layers
    from slimformer.auto.study import DEEPER_ATTR, WARM_START_ATTR, open_study
    from slimformer.models import check_pytorch_checkpoint, resolve_model_path
    from slimformer.storage import printable_url
    from slimformer.studies import BASELINE_ATTR, requeue_abandoned

    config = config.quick() if quick else config
    config.validate()
    output = check_output_dir(output)
    for path in (model, config.student):  # refused before the output folder is made
        if path is not None:
            check_pytorch_checkpoint(resolve_model_path(path))
    splits = load_splits(data, config, quick)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(config.work_dir) if config.work_dir else output / "work"
    say(f"validation: {len(splits.validation)} rows." + small_validation_note(len(splits.validation)))
    warn_if_busy("as the study starts")
    teacher = ensure_teacher(model, splits, work, quick, config.seed)
    _preflight(teacher, config)
    url = config.storage or f"sqlite:///{output.resolve() / 'study.db'}"
    name = config.study_name or study_name(teacher, splits, config)
    study = open_study(url, name, config)
    if config.storage is None and (n := requeue_abandoned(study)):
        say(f"{n} trial(s) left running by a killed run: failed and queued again")
    if config.storage is None and not study.get_trials(deepcopy=False):
        # a new study starts from the packaged recipe's choices; only with the default storage, where this
        # command is the only writer (processes joining a shared study at once could each enqueue it)
        base = resolve_model_path(config.student) if config.student else teacher
        max_layers = max_student_layers(base, teacher)
        baseline = recipe_params(config, max_layers)
        study.enqueue_trial(baseline, user_attrs={BASELINE_ATTR: "the packaged recipe's choices"})
        deeper = deeper_recipe_params(baseline, config, max_layers)
        for params in deeper:  # screened like any shape: those that cannot fit the budget cost a screen
            study.enqueue_trial(params, user_attrs={DEEPER_ATTR: params["layers"]})
        for params in warm_start_params(work, teacher, name, config, [baseline, *deeper]):  # earlier fronts
            study.enqueue_trial(params, user_attrs={WARM_START_ATTR: True})
    say(f"study {name} in {printable_url(url)}; budget {config.budget_text}; {config.workers} worker(s)")
    progress = output / "auto.json"  # the trials table while the study runs; the summary replaces it at the end
    if config.workers == 1:
        _work(teacher, splits, work, config, url, name, 0, progress)
    else:
        _spawn_workers(teacher, data, work, config, url, name, quick, progress)
    return finish(study, teacher, splits, output, config, work)


BUSY_PROBE_S = 1.0  # seconds of other processes' CPU use looked at before the study and before the final benchmark


def warn_if_busy(when: str) -> float | None:
    """Say so when other processes keep the CPU busy `when` (returns their share of the CPU over BUSY_PROBE_S,
    None where it cannot be read). The search's screens and trials time the teacher at the candidate's thread
    count and cope; the final benchmark times each model as it is deployed, where a steady load on one core slows
    a multi-threaded teacher far more than a 1-thread candidate (BENCHMARKS.md, "slimformer auto")."""
    from slimformer.timing import OtherLoad

    with OtherLoad() as other:
        time.sleep(BUSY_PROBE_S)
    if other.busy:
        say(
            f"warning: other processes are taking {100 * other.share:.0f} % of the CPU {when}: the side-by-side "
            "speed-ups measured while they do come out optimistic; run on a quiet machine"
        )
    return other.share


def load_splits(spec: DataSpec, config: AutoConfig, quick: bool) -> Any:
    from slimformer.data import load_data
    from slimformer.pipeline import QUICK_EVAL_ROWS, QUICK_TRAIN_ROWS

    splits = load_data(
        spec.name,
        spec.data_dir,
        spec.text_column,
        spec.label_column,
        seed=config.seed,
        validation_fraction=config.validation_fraction,
    )
    if quick:
        splits = splits.subset(QUICK_TRAIN_ROWS, QUICK_EVAL_ROWS, seed=config.seed)
    if config.max_train_samples or config.max_eval_samples:
        splits = splits.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    return splits


def ensure_teacher(model: str, splits: Any, work: Path, quick: bool, seed: int) -> Path:
    """The fine-tuned teacher: `model` itself when its head has the data's labels, else fine-tuned (cached)."""
    from slimformer.envelope import is_finished, model_key, stage_key
    from slimformer.finetune import finetune
    from slimformer.models import head_covers, resolve_model_path
    from slimformer.pipeline import build_config as build_recipe_config
    from slimformer.pipeline import recipe_stage

    path = resolve_model_path(model)
    if head_covers(path, splits.labels):
        return path
    config = dataclasses.replace(build_recipe_config(recipe_stage("finetune-teacher")), seed=seed)  # as `run` does
    config = config.quick() if quick else config
    folder = work / f"teacher-{stage_key('finetune', config, model_key(path), None, splits)}"
    if not is_finished(folder):
        say(f"{path} has no head for these {len(splits.labels)} labels: fine-tuning it first")
        finetune(path, folder, config, splits)
    return folder


def recipe_params(config: AutoConfig, max_layers: int | None = None) -> dict[str, Any]:
    """The packaged recipe's shape and distillation settings as trial parameters (those inside the space;
    `max_layers`: the deepest student the space has by default)."""
    from slimformer.cpu import default_threads
    from slimformer.pipeline import recipe_stage

    distill = recipe_stage("distill").options
    vocab = recipe_stage("prune", "vocab")
    sliced = recipe_stage("prune", "structured")
    sliced = sliced.options if sliced else {}
    quantize = recipe_stage("quantize")
    params = {
        "layers": distill.get("student_layers"),
        "heads_fraction": sliced.get("heads_fraction", 0.0),
        "ffn_fraction": sliced.get("ffn_fraction", sliced.get("sparsity", 0.0)),
        "vocab_clusters": vocab.options.get("vocab_clusters", 1024) if vocab else 0,
        "quantization": quantize.options.get("method", "dynamic") if quantize else "dynamic",
        "per_channel": True,
        "threads": default_threads(),
        "epochs": int(distill.get("epochs", 3)),
        "alpha": distill.get("alpha"),
        "temperature": distill.get("temperature"),
        "learning_rate": distill.get("learning_rate"),
        "attention_weight": float(distill.get("attention_weight", 0.0)),
        "hidden_weight": float(distill.get("hidden_weight", 0.0)),
        "augment": distill.get("augment", ""),
    }
    return within_space(params, config, max_layers)


def deeper_recipe_params(baseline: dict[str, Any], config: AutoConfig, max_layers: int) -> list[dict[str, Any]]:
    """The recipe's choices at every searched depth above the recipe's, deepest first. Depth is what buys accuracy
    back (a 5-layer student of the 6-layer teacher loses 0.43 in-scope points, the recipe's 3 layers 0.83:
    BENCHMARKS.md, "Depth, not width"), so a study tries the deepest shapes the budget may allow first; the screen
    drops those that cannot fit before any training."""
    from slimformer.auto.candidate import depth_choices

    if "layers" not in baseline:
        return []
    deeper = sorted((depth for depth in depth_choices(config, max_layers) if depth > baseline["layers"]), reverse=True)
    return [{**baseline, "layers": depth} for depth in deeper]


PARETO_FILE = "pareto.json"  # in the work folder: each finished study's Pareto front, for warm starts


def remember_front(work: Path, teacher: Path, study_name: str, front: list[Any], student: str | None = None) -> None:
    """Record a finished study's Pareto front (its trials' parameters and `--student`'s identity) in
    WORK/pareto.json."""
    from slimformer.artifacts import remember_json
    from slimformer.distillation import model_files_hash

    params = [dict(t.params) for t in front]
    entry = {"teacher": model_files_hash(teacher), "student": student, "params": params}
    remember_json(work / PARETO_FILE, study_name, entry)


def warm_start_params(
    work: Path, teacher: Path, study_name: str, config: AutoConfig, enqueued: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The Pareto fronts of earlier studies of the same teacher and `--student` in the work folder, as trial
    parameters of this study's space (values outside it left to the sampler), without repeats of one another or
    of the `enqueued` trials: a new study starts from them."""
    from slimformer.artifacts import read_json_cache
    from slimformer.distillation import model_files_hash

    teacher_hash, student = model_files_hash(teacher), student_identity(config)
    seen: list[dict[str, Any]] = list(enqueued)
    for name, entry in read_json_cache(work / PARETO_FILE).items():
        if name == study_name or entry.get("teacher") != teacher_hash or entry.get("student") != student:
            continue
        for params in entry.get("params", []):
            kept = within_space(params, config)
            if kept and not any(repeats(kept, earlier) for earlier in seen):
                seen.append(kept)
    return seen[len(enqueued) :]


def repeats(params: dict[str, Any], earlier: dict[str, Any]) -> bool:
    """Whether a trial of `params` would repeat one enqueued with `earlier`: they agree on every parameter
    `earlier` fixes (the baseline leaves the INT8 method to the sampler, so an earlier study's run of the
    recipe's choices, with the method it drew, is the baseline again)."""
    return all(params.get(name) == value for name, value in earlier.items())


def within_space(params: dict[str, Any], config: AutoConfig, max_layers: int | None = None) -> dict[str, Any]:
    """The parameters of `params` that lie inside `config`'s search space (`max_layers`: the deepest student
    when `config` gives no depths; None: any depth)."""
    from slimformer.auto.candidate import depth_choices

    choices = {
        "layers": depth_choices(config, max_layers) if max_layers else config.layers_choices,
        "heads_fraction": config.heads_fractions,
        "ffn_fraction": config.ffn_fractions,
        "vocab_clusters": config.vocab_clusters,
        "quantization": config.quantization,
        "threads": config.threads,
        "attention_weight": config.attention_weights,
        "hidden_weight": config.hidden_weights,
        "augment": config.augment_choices,
    }
    ranges = {
        "epochs": config.epochs_range,
        "alpha": config.alpha_range,
        "temperature": config.temperature_range,
        "learning_rate": config.learning_rate_range,
    }
    keep = {k: v for k, v in params.items() if v is not None and (choices.get(k) is None or v in choices[k])}
    return {k: v for k, v in keep.items() if k not in ranges or ranges[k][0] <= v <= ranges[k][1]}


def _preflight(teacher: Path, config: AutoConfig) -> None:
    """One-line errors before any work: a space the students' base cannot take."""
    from slimformer.families import preflight
    from slimformer.models import load_tokenizer, resolve_model_path
    from slimformer.prune.stage import PruneConfig

    base = resolve_model_path(config.student) if config.student else teacher
    if max(config.heads_fractions) > 0:
        reason = preflight(base, "prune", PruneConfig(method="structured", heads_fraction=max(config.heads_fractions)))
        if reason:
            raise ConfigError(f"{reason}: search --heads-fractions 0 only")
    layer_losses = max(config.hidden_weights) > 0 or max(config.attention_weights) > 0
    if layer_losses and base != teacher and load_tokenizer(base).get_vocab() != load_tokenizer(teacher).get_vocab():
        raise ConfigError(
            f"--student {config.student} has another tokenizer than the teacher, and layer losses compare the two "
            "token by token: search --hidden-weights 0 --attention-weights 0"
        )


def student_identity(config: AutoConfig) -> str | None:
    """`--student` by the hash of its files (None without one): the same model wherever its folder lies."""
    from slimformer.distillation import model_files_hash
    from slimformer.models import resolve_model_path

    return model_files_hash(resolve_model_path(config.student)) if config.student is not None else None


def study_name(teacher: Path, splits: Any, config: AutoConfig) -> str:
    """Same teacher, data, budget, space and `--student` (by content, wherever its folder is): the same study (a
    re-run resumes it)."""
    from slimformer.distillation import model_files_hash

    space = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_ONLY_FIELDS}
    if config.student is not None:
        space["student"] = student_identity(config)
    digest = hashlib.sha256(json.dumps(space, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"auto-{model_files_hash(teacher)[:10]}-{splits.fingerprint[:10]}-{digest}"


# options that change how the study runs, not what it searches
RUN_ONLY_FIELDS = {
    "trials",
    "time_budget",
    "max_screened",
    "storage",
    "study_name",
    "workers",
    "work_dir",
    "heartbeat_seconds",
    "final_candidates",
    "halving",
}


def _work(
    teacher: Path, splits: Any, work: Path, config: AutoConfig, url: str, name: str, index: int, progress: Path
) -> None:
    """One worker: join the study and run trials until it holds enough."""
    from slimformer.auto.study import Objective, open_study, run_worker
    from slimformer.envelope import model_key

    # a different seed per worker (and per resumption), else workers joining at once sample the same points
    joined = os.getpid() if config.storage else 0  # processes started apart on other machines
    study = open_study(url, name, config, seed_offset=1000 * index + joined)
    objective = Objective(teacher, model_key(teacher), splits.without_test(), work, config)
    run_worker(objective, study, config, say, lambda study: write_progress(study, progress))


def worker_main(
    teacher: str,
    data: DataSpec,
    work: str,
    config: AutoConfig,
    url: str,
    name: str,
    quick: bool,
    progress: str,
    index: int,
) -> None:
    """Entry point of a local worker process (spawned): its share of the cores, its own data loading."""
    import torch

    from slimformer.cpu import default_threads

    torch.set_num_threads(max(1, default_threads() // config.workers))
    splits = load_splits(data, config, quick)
    _work(Path(teacher), splits, Path(work), config, url, name, index, Path(progress))


def _spawn_workers(
    teacher: Path, data: DataSpec, work: Path, config: AutoConfig, url: str, name: str, quick: bool, progress: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    args = (str(teacher), data, str(work), config, url, name, quick, str(progress))
    workers = [
        context.Process(target=worker_main, args=(*args, i), name=f"auto-worker-{i}") for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [w.name for w in workers if w.exitcode]
    if failed:
        say(f"worker(s) {', '.join(failed)} exited with an error; their trials are failed and were re-run")


def trained_per_hour(study: Any) -> float | None:
    """Trials that spent training, per hour of the study's wall clock (first trial start to last trial end)."""
    from slimformer.auto.study import trained

    finished = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not finished:
        return None
    hours = (
        max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)
    ).total_seconds() / 3600
    return round(sum(trained(t) for t in finished) / hours, 2) if hours > 0 else None


def time_spent(study: Any) -> dict[str, float]:
    """Seconds the study's trials spent screening shapes, training (the stage chain) and timing candidates."""
    from slimformer.auto.study import SECONDS_ATTR

    totals: dict[str, float] = {}
    for trial in study.get_trials(deepcopy=False):
        for part, value in (trial.user_attrs.get(SECONDS_ATTR) or {}).items():
            totals[part] = round(totals.get(part, 0.0) + value, 1)
    return totals


def write_progress(study: Any, path: Path) -> None:
    """auto.json while the study runs: every trial so far as a table row (state, shape, speed-up, accuracy, why)."""
    from slimformer.artifacts import write_json
    from slimformer.auto.select import trial_rows

    rows = trial_rows(study)
    write_json(path, {"running": True, "study": study.study_name, "trials": state_counts(rows), "trial_table": rows})


def state_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many trial rows are in each state ("complete", "screened out", ...)."""
    return {state: sum(row["state"] == state for row in rows) for state in sorted({row["state"] for row in rows})}


def finish(
    study: Any, teacher: Path, splits: Any, output: Path, config: AutoConfig, work: Path | None = None
) -> dict[str, Any]:
    """Select on validation, benchmark the finalists on test once, report, write model/ when the budget is met;
    the Pareto front is remembered in `work` for later studies' warm start."""
    from slimformer.artifacts import write_json
    from slimformer.auto import report
    from slimformer.auto.select import select, trial_rows

    selection = select(study, config)
    if work is not None and selection.front:
        remember_front(work, teacher, study.study_name, selection.front, student_identity(config))
    trials = trial_rows(study)
    if not trials:
        raise BudgetNotMet(f"study {study.study_name} holds no trial; run without --time-budget or with more time")
    bench, rows, pick_row, outcome = _final_benchmark(teacher, selection, splits, config, work)
    pick = selection.pick
    summary = {
        "headline": report.headline(rows, pick_row, outcome, config),
        "budget": config.budget_text,
        "study": study.study_name,
        "verdict": outcome,
        "pick": None
        if pick is None
        else {"trial": pick.number, "params": pick.params, "folder": pick.user_attrs["folder"]},
        "pareto_front": [t.number for t in selection.front],
        "trials": state_counts(trials),
        "trained_per_hour": trained_per_hour(study),
        "seconds_spent": time_spent(study),
        "trial_table": trials,
        "notes": _notes(selection, config, pick_row),
        "final_benchmark": rows,
        "environment": bench["environment"] if bench else None,
    }
    busy = (bench or {}).get("environment", {}).get("others_cpu")
    if is_busy(busy):  # measured over the final benchmark's timed rounds
        summary["notes"].append(
            f"Other processes took {100 * busy:.0f} % of the CPU while the final benchmark timed the models, which "
            "makes a 2-thread teacher look slow: each finalist was timed again turn about with the teacher at its "
            "own thread count, as during the search, and the p50s and speed-ups above are those (the first timing "
            "is kept in auto.json as loaded_p50_ms)."
        )
    spent = ", ".join(f"{part} {seconds / 60:.1f} min" for part, seconds in summary["seconds_spent"].items())
    if spent:
        per_hour = summary["trained_per_hour"]
        summary["notes"].append(f"Time: {spent}" + (f"; {per_hour:g} trained trials per hour." if per_hour else "."))
    reference = next(t.user_attrs for t in study.get_trials(deepcopy=False) if "teacher_p50_ms" in t.user_attrs)
    teacher_ref = {"accuracy": reference["teacher_validation_accuracy"], "p50_ms": reference["teacher_p50_ms"]}
    plot = report.write_pareto_plot(
        trials, summary["pareto_front"], pick and pick.number, teacher_ref, config, output / "pareto_front.png"
    )
    report.write_report(output, summary, rows, trials, plot)
    write_json(output / "auto.json", summary)
    if pick is not None:
        _write_model(Path(pick.user_attrs["folder"]), output / "model", bench, teacher, summary, splits)
    say(summary["headline"].replace("**", ""))
    if pick is None:
        raise BudgetNotMet(
            f"no candidate met the budget ({config.budget_text}); the closest are in {output / 'report.md'}"
        )
    if not outcome["met"]:
        raise BudgetNotMet(f"the pick met the budget on validation but not on test; see {output / 'report.md'}")
    return summary


def _final_benchmark(teacher: Path, selection: Any, splits: Any, config: AutoConfig, work: Path | None = None) -> tuple:
    """The benchmark of teacher + finalists on test, its rows, the pick's row and the verdict on the budget."""
    from slimformer.auto.select import final_benchmark, interval_text, verdict
    from slimformer.auto.study import DROP_INTERVAL
    from slimformer.report import comparison_rows

    if not selection.complete:
        return None, [], None, verdict(None, {}, config)
    warn_if_busy("before the final benchmark")
    bench = final_benchmark(teacher, selection, splits, config, work)  # corrected when others were busy
    rows = comparison_rows(bench)
    for row, result in zip(rows, bench["results"], strict=True):  # timed under load: the first timing, kept
        if "loaded_p50_ms" in result:
            row["loaded_p50_ms"] = result["loaded_p50_ms"]
            row["loaded_speedup"] = round(bench["results"][0]["loaded_p50_ms"] / result["loaded_p50_ms"], 2)
    teacher_row = rows[0]
    teacher_row["meets"] = "(reference)"
    for row, result in zip(rows[1:], bench["results"][1:], strict=True):
        row[DROP_INTERVAL] = result[DROP_INTERVAL]  # paired, on the test rows
        row["test_drop_interval"] = interval_text(result[DROP_INTERVAL])
        row["meets"] = "yes" if verdict(row, teacher_row, config)["met"] else "no"
    name = f"trial-{selection.pick.number}" if selection.pick is not None else None
    pick_row = next((r for r in rows[1:] if r["model"] == name), None)
    return bench, rows, pick_row, verdict(pick_row, teacher_row, config)


def small_validation_note(rows: int) -> str:
    """A warning when validation is too small to separate candidates a point apart ("" when it is not)."""
    if rows >= SMALL_VALIDATION_ROWS:
        return ""
    return (
        f" Validation is small ({rows} rows: one row is {100 / rows:.2f} points), so gaps under a point are noise"
        " (a dataset without a validation split: --validation-fraction)."
    )


def drop_text(interval: dict[str, Any], config: AutoConfig) -> str:
    """A paired drop interval in words: rows, drop, 90 % interval, confidence it is within the tolerance."""
    return (
        f"{interval['rows']} rows; the pick's drop against the teacher is {interval['drop_points']:+.2f} points "
        f"(90 % paired-bootstrap interval {interval['low']:+.2f}..{interval['high']:+.2f}); within the "
        f"{config.max_accuracy_drop:g}-point tolerance with {100 * interval['p_within_tolerance']:.0f} % confidence."
    )


def _notes(selection: Any, config: AutoConfig, pick_row: dict[str, Any] | None = None) -> list[str]:
    """The report's notes: how the pick was chosen, and its drop interval on validation and on test."""
    from slimformer.auto.study import DROP_INTERVAL

    notes = [
        "Candidates were trained and chosen on the validation split only; the test split was scored once, "
        "in the final side-by-side benchmark of the finalists and the teacher.",
        f"Search: {len(selection.complete)} trial(s) trained to the end; latency during the search was timed per "
        "worker at batch 1 on validation queries, turn about with the teacher; the final numbers are below.",
    ]
    if selection.why:
        notes.append(selection.why[0].upper() + selection.why[1:] + ".")
    if selection.pick is not None and DROP_INTERVAL in selection.pick.user_attrs:
        interval = selection.pick.user_attrs[DROP_INTERVAL]
        notes.append(f"Validation: {drop_text(interval, config)}" + small_validation_note(interval["rows"]))
    if pick_row is not None and pick_row.get(DROP_INTERVAL):
        notes.append(f"Test: {drop_text(pick_row[DROP_INTERVAL], config)}")
    if selection.pick is None and selection.closest:
        closest = "; ".join(f"trial {t.number}: {against_budget(t.user_attrs, config)}" for t in selection.closest[:3])
        notes.append(f"No candidate met the budget on validation. Closest trained: {closest}.")
    elif selection.pick is None:
        notes.append("No shape met the budget even untrained, so nothing was trained; the smallest are in the table.")
    return notes


def against_budget(attrs: dict[str, Any], config: AutoConfig) -> str:
    """A trained trial's figures beside the budget's, in words: "10.3x (≥ 12x), a drop of 0.52 points (≤ 0.5)"."""
    figure, limit = config.budget_limit
    measured = {"p50_ms": "{:.3f} ms", "speedup": "{:.1f}x", "size_mb": "{:.1f} MB"}[figure].format(attrs[figure])
    return (
        f"{measured} ({limit}), a drop of {attrs['accuracy_drop_points']:.2f} points (≤ {config.max_accuracy_drop:g})"
    )


def _write_model(
    folder: Path, target: Path, bench: dict[str, Any], teacher: Path, summary: dict[str, Any], splits: Any
) -> None:
    from slimformer.auto.report import model_card_section
    from slimformer.pipeline import Variant
    from slimformer.report import ReportConfig, write_deployable_model

    variants = [Variant("teacher", teacher, "teacher"), Variant(f"trial-{summary['pick']['trial']}", folder, "auto")]
    # threads tuned here
    write_deployable_model(folder, target, bench, variants, ReportConfig(), data=splits, producer="slimformer auto")
    card = target / "README.md"
    card.write_text(card.read_text().replace("## Measured", model_card_section(summary) + "\n## Measured", 1))


def say(message: str) -> None:
    """One line of the study's progress on stderr."""
    from slimformer.console import say as say_line

    say_line("auto", message)
