"""One candidate of `slimformer auto`: a shape (depth, heads, FFN, vocabulary, INT8 method, threads) and its
training (alpha, T, epochs, learning rate, intermediate-layer loss weights, transfer data), built by composing
the registered stage functions. Depth 0 is the static student: `static` → export → quantize.

The chain is: K layers of the base (the teacher, or `--student`) evenly spaced from `--first-kept-layer` to
the last → structured slicing of heads and FFN neurons (no training yet) → distillation from the teacher's
cached logits → the recipe's vocabulary pruning (its sign rows, with the shape's shared rows) → export →
optimize → quantize. The screen runs the same chain without
the distillation: latency and size depend on the shape, not the weights, so a shape that cannot meet the
budget is dropped before any training is spent on it. Every step is cached in the shared work folder under a
key of its options and input (:func:`slimformer.envelope.stage_key`), behind a file lock, so trials and
workers reuse each other's finished steps and never run one twice at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slimformer.auto.config import TIMING_TURN_S, AutoConfig

MEASURE_ROUNDS = 5  # turns the candidate and the teacher take over the latency queries
SCREEN_EVAL_ROWS = 64  # validation rows the screening chain's stages score on (their accuracy is not used)


@dataclass(frozen=True)
class Shape:
    """What decides a candidate's latency and size."""

    layers: int
    heads_fraction: float
    ffn_fraction: float
    vocab_clusters: int
    quantization: str
    per_channel: bool
    threads: int


@dataclass(frozen=True)
class Training:
    """How a shape is trained (distillation from the teacher)."""

    epochs: int
    alpha: float
    temperature: float
    learning_rate: float
    attention_weight: float = 0.0  # intermediate-layer losses (slimformer.layer_losses)
    hidden_weight: float = 0.0
    augment: str = ""  # transfer data (slimformer.transfer)


def depth_choices(config: AutoConfig, max_layers: int) -> tuple[int, ...]:
    """The student depths searched: `--layers-choices`, or 1 .. `max_layers` (:func:`max_student_layers`)."""
    return config.layers_choices or tuple(range(1, max_layers + 1))


def suggest_shape(trial: Any, config: AutoConfig, max_layers: int, cores: int) -> Shape:
    """The shape part of the search space (suggested first: it is screened before training is sampled).
    `max_layers`: the deepest student by default (see :meth:`StageCache.max_layers`)."""
    layers = depth_choices(config, max_layers)
    threads = config.threads or tuple(range(1, cores + 1))
    shape = {
        "layers": trial.suggest_categorical("layers", list(layers)),
        "heads_fraction": trial.suggest_categorical("heads_fraction", list(config.heads_fractions)),
        "ffn_fraction": trial.suggest_categorical("ffn_fraction", list(config.ffn_fractions)),
        "vocab_clusters": trial.suggest_categorical("vocab_clusters", list(config.vocab_clusters)),
        "quantization": trial.suggest_categorical("quantization", list(config.quantization)),
    }
    per_channel = trial.suggest_categorical("per_channel", [True, False]) if config.search_per_channel else True
    return Shape(**shape, per_channel=per_channel, threads=trial.suggest_categorical("threads", list(threads)))


def suggest_training(trial: Any, config: AutoConfig) -> Training:
    """The training part of the search space."""
    from slimformer.studies import suggest_distillation

    return Training(
        **suggest_distillation(trial, config),
        attention_weight=trial.suggest_categorical("attention_weight", list(config.attention_weights)),
        hidden_weight=trial.suggest_categorical("hidden_weight", list(config.hidden_weights)),
        augment=trial.suggest_categorical("augment", list(config.augment_choices)),  # drawn last
    )


class StageCache:
    """Runs registered stages into `root/<stage>-<key>/`, reusing any finished folder (one writer per key).
    Students start from the layers of `base` (folder, cache key): the teacher unless :func:`student_base` set
    another model (`--student`)."""

    def __init__(self, root: Path, teacher: Path, teacher_key: str) -> None:
        self.root = root
        self.teacher = teacher
        self.teacher_key = teacher_key
        self.base = (teacher, teacher_key)
        root.mkdir(parents=True, exist_ok=True)

    def run(self, kind: str, source: tuple[Path, str], config: Any, data: Any, **kwargs: Any) -> tuple[Path, str]:
        """Stage `kind` on `source` (its folder and cache key); returns the output model folder and its key."""
        from slimformer.envelope import stage_key
        from slimformer.stages import STAGES

        teacher = self.teacher if config.needs_teacher else None
        key = stage_key(kind, config, source[1], teacher, data)
        folder = self.root / f"{kind}-{key}"
        STAGES[kind].run(source[0], folder, config, data, teacher, reuse=True, **kwargs)  # a finished one is reused
        return folder / config.model_subdir, key

    def base_depth(self) -> int:
        """How many layers the base has."""
        return model_depth(self.base[0])

    def max_layers(self) -> int:
        """The deepest student searched by default (:func:`max_student_layers`)."""
        return max_student_layers(self.base[0], self.teacher)

    def student(self, layers: int, first_layer: int = 0) -> tuple[Path, str]:
        """K layers of the base evenly spaced from `first_layer` to the last, untrained (the start of every
        chain of that depth)."""
        from slimformer.artifacts import write_metrics
        from slimformer.envelope import claim_folder
        from slimformer.students import evenly_spaced_layers, student_from_teacher

        base, base_key = self.base
        depth = self.base_depth()
        as_from_zero = evenly_spaced_layers(depth, layers, first_layer) == evenly_spaced_layers(depth, layers)
        key = f"{base_key}-L{layers}" + ("" if as_from_zero else f"-from{first_layer}")  # 1 layer: the last, either way
        folder = self.root / f"student-{key}"
        with claim_folder(folder) as todo:
            if todo:
                kept = student_from_teacher(base, layers, folder, first_layer)
                write_metrics(folder, {"stage": "student", "teacher": str(base), "layers_kept": kept})
        return folder, key


def model_depth(model: Path) -> int:
    """How many layers the checkpoint in `model` has (its family's depth field)."""
    from slimformer.families import family_for_model_type, model_type_of

    family = family_for_model_type(model_type_of(model))
    return int(json.loads((model / "config.json").read_text())[family.depth_fields[0]])


def max_student_layers(base: Path, teacher: Path) -> int:
    """The deepest student searched by default: the teacher's depth - 1, or all of another base's layers."""
    depth = model_depth(base)
    return max(depth - 1, 1) if base == teacher else depth


def student_base(cache: StageCache, config: AutoConfig, data: Any) -> tuple[Path, str]:
    """The model whose layers every student starts from, with its cache key: the teacher, or `--student`. A
    `--student` without a head for the data's labels is first distilled from the teacher at full depth with
    the packaged recipe's distillation settings (once per work folder), as `make book`'s MiniLM chain does."""
    from slimformer.envelope import model_key
    from slimformer.models import head_covers, resolve_model_path
    from slimformer.pipeline import build_config, recipe_stage

    if config.student is None:
        return cache.teacher, cache.teacher_key
    path = resolve_model_path(config.student)
    if head_covers(path, data.labels):
        return path, model_key(path)
    recipe = build_config(recipe_stage("distill"))
    low, high = config.epochs_range
    distill = replace(
        recipe,
        student=str(path),
        student_layers=None,
        epochs=float(min(max(recipe.epochs, low), high)),
        **distill_settings(cache, config),
    )
    return cache.run("distill", (path, model_key(path)), distill, data)


def vocab_config(shape: Shape, eval_rows: int | None, common: dict[str, Any]) -> Any:
    """The packaged recipe's vocabulary pruning (how it treats unseen tokens, its minimum count) with the shape's
    number of shared k-means rows and the study's settings."""
    from slimformer.pipeline import build_config, recipe_stage
    from slimformer.prune import PruneConfig

    stage = recipe_stage("prune", "vocab")
    recipe = build_config(stage) if stage is not None else PruneConfig(method="vocab")
    return replace(recipe, vocab_clusters=shape.vocab_clusters, max_eval_samples=eval_rows, **common)


def distill_settings(cache: StageCache, config: AutoConfig) -> dict[str, Any]:
    """How every distillation of a study runs, its training choices aside: the teacher logits cached in the
    work folder, and the recipe's dropout."""
    from slimformer.pipeline import build_config, recipe_stage

    return {
        "dropout": build_config(recipe_stage("distill")).dropout,
        "batch_size": config.batch_size,
        "precision": config.precision,
        "cache_dir": str(cache.root / "teacher-logits"),
        "max_eval_samples": config.max_eval_samples,
        "max_length": config.max_length,
        "seed": config.seed,
    }


def build_chain(
    cache: StageCache,
    shape: Shape,
    training: Training | None,
    data: Any,
    config: AutoConfig,
    callbacks: tuple = (),
) -> Path:
    """The candidate's INT8 ONNX folder: trained when `training` is given, else the untrained screen."""
    from slimformer.distill import DistillConfig
    from slimformer.onnx.export import ExportConfig
    from slimformer.onnx.optimize import OptimizeConfig
    from slimformer.prune.stage import PruneConfig

    eval_rows = config.max_eval_samples if training else SCREEN_EVAL_ROWS
    screen_data = _screen_data(data)
    stage_data = data if training else screen_data  # what the stages after the slicing score on
    common = {"max_length": config.max_length, "seed": config.seed}
    if shape.layers == 0:
        current = _static_student(cache, training, data, config)
        export = ExportConfig(max_length=config.max_length, parity_examples=200, threads=shape.threads)
        current = cache.run("export", current, export, stage_data)
        return cache.run("quantize", current, _quantize_config(shape, config, eval_rows), stage_data)[0]
    current = cache.student(shape.layers, config.first_kept_layer)
    if shape.heads_fraction or shape.ffn_fraction:
        prune = PruneConfig(
            method="structured",
            epochs=0.0,  # slice only: the distillation below trains the sliced student
            sparsity=shape.ffn_fraction,
            heads_fraction=shape.heads_fraction,
            max_eval_samples=SCREEN_EVAL_ROWS,
            **common,
        )
        current = cache.run("prune", current, prune, screen_data)  # the same for screen and training: shared
    if training is not None:
        distill = DistillConfig(
            student=str(current[0]),
            alpha=training.alpha,
            temperature=training.temperature,
            epochs=float(training.epochs),
            learning_rate=training.learning_rate,
            attention_weight=training.attention_weight,
            hidden_weight=training.hidden_weight,
            augment=training.augment,
            **distill_settings(cache, config),
        )
        current = cache.run("distill", current, distill, data, callbacks=callbacks)
    if shape.vocab_clusters:
        current = cache.run("prune", current, vocab_config(shape, eval_rows, common), stage_data)
    export = ExportConfig(max_length=config.max_length, parity_examples=200, threads=shape.threads)
    current = cache.run("export", current, export, stage_data)
    current = cache.run("optimize", current, OptimizeConfig(level=99, threads=shape.threads), None)
    return cache.run("quantize", current, _quantize_config(shape, config, eval_rows), stage_data)[0]


def _quantize_config(shape: Shape, config: AutoConfig, eval_rows: int | None) -> Any:
    from slimformer.onnx.quantize import QuantizeConfig
    from slimformer.pipeline import build_config, recipe_stage

    static = {"calibration_samples": config.calibration_samples} if shape.quantization == "static" else {}
    return QuantizeConfig(
        method=shape.quantization,
        word_embeddings_4bit=build_config(recipe_stage("quantize")).word_embeddings_4bit,  # as the recipe stores it
        per_channel=shape.per_channel,
        max_eval_samples=eval_rows,
        threads=shape.threads,
        seed=config.seed,
        **static,
    )


def _static_student(cache: StageCache, training: Training | None, data: Any, config: AutoConfig) -> tuple[Path, str]:
    """Depth 0: the static student (slimformer static) of the teacher; the screen trains it one epoch (its
    latency and size do not depend on the weights), a trial with the trial's alpha, T, epochs and transfer data."""
    from slimformer.static_student import StaticConfig

    options: dict[str, Any] = {"epochs": 1.0}
    if training is not None:
        options = {
            "epochs": float(training.epochs),
            "alpha": training.alpha,
            "temperature": training.temperature,
            "augment": training.augment,
        }
    static = StaticConfig(
        max_length=config.max_length,
        seed=config.seed,
        cache_dir=str(cache.root / "teacher-logits"),
        max_eval_samples=config.max_eval_samples,
        precision=config.precision,
        **options,
    )
    return cache.run("static", (cache.teacher, cache.teacher_key), static, data)


_SCREEN_DATA: dict[str, Any] = {}


def _screen_data(data: Any) -> Any:
    """The trial data with validation cut to a few rows: the screen's stages need data, not their scores."""
    if data.fingerprint not in _SCREEN_DATA:
        _SCREEN_DATA[data.fingerprint] = data.subset(None, SCREEN_EVAL_ROWS, seed=0)
    return _SCREEN_DATA[data.fingerprint]


SCALING_TRIES = 3  # tries at timing the teacher's thread scaling on a quiet machine before using a loaded one
SCALING_FILE = "teacher_threads.json"  # in the work folder: the teacher's quiet thread scaling, per CPU


class TeacherClock:
    """The teacher as the yardstick of every speed-up, timed at the candidate's thread count so that both meet the
    same contention: a steady load on one of 2 cores slows a 2-thread teacher 2-3x and a 1-thread candidate hardly
    at all, but at one thread each both run on the free core. The teacher's quiet thread scaling (its p50 at its
    own thread count over its p50 at the candidate's) converts the ratio back to the budget's terms. It is timed
    once per CPU, teacher and thread count while other processes leave the CPU alone (`timing.QUIET_SHARE`), and
    remembered in `memory` (the work folder's teacher_threads.json), so a loaded machine later reuses it."""

    def __init__(
        self,
        teacher: Path,
        teacher_key: str,
        memory: Path | None = None,
        threads: int | None = None,
        turn_s: float = TIMING_TURN_S,
    ) -> None:
        from slimformer.cpu import cpu_model
        from slimformer.predictor import load

        self.teacher = teacher
        self.predictor = load(teacher, threads=threads)  # its own thread count: saved, else all cores
        self.threads = int(self.predictor.threads)
        self.memory = memory
        self.turn_s = turn_s  # each turn of either side lasts at least this long (`AutoConfig.timing_turn_s`)
        self.prefix = f"{cpu_model()}|{teacher_key}|{self.threads}"
        self._sessions: dict[int, Any] = {}
        self._loaded_scaling: dict[int, dict[str, Any]] = {}  # timed under load: kept for this process only

    def timer(self, threads: int) -> Any:
        """A round timer of the teacher at `threads` (PyTorch: torch's thread count for the round; ONNX: its own
        session)."""
        from slimformer.timing import batch1_latencies_ms, predictor_timer

        if threads == self.threads:
            return predictor_timer(self.predictor, self.turn_s)
        if self.predictor.backend != "pytorch":
            from slimformer.predictor import load

            return predictor_timer(self._sessions.setdefault(threads, load(self.teacher, threads=threads)), self.turn_s)

        def timed_at(queries: list[str], warmup: int) -> list[float]:
            import torch

            torch.set_num_threads(threads)
            try:
                return batch1_latencies_ms(self.predictor, queries, warmup, self.turn_s)
            finally:
                torch.set_num_threads(self.threads)

        return timed_at

    def scaling(self, threads: int, texts: list[str]) -> dict[str, Any]:
        """The teacher's p50 at its own thread count over its p50 at `threads`, timed turn about on `texts`:
        remembered, else timed (up to SCALING_TRIES times until the machine is quiet; remembered only then, and
        under load kept for this process, not timed again)."""
        from slimformer.artifacts import read_json_cache, remember_json
        from slimformer.timing import flat, interleaved_latencies_ms, is_busy, least_loaded, median_ms, split_rounds

        if threads == self.threads:
            return {"factor": 1.0, "others_cpu": None, "remembered": False}
        key = f"{self.prefix}->{threads}"
        found = read_json_cache(self.memory).get(key) if self.memory else None
        if found:
            return {**found, "remembered": True}
        if threads in self._loaded_scaling:
            return self._loaded_scaling[threads]
        timers = {"own": self.timer(self.threads), "candidate": self.timer(threads)}

        def factor() -> float:
            timings = interleaved_latencies_ms(timers, split_rounds(texts, MEASURE_ROUNDS), warmup=3)
            return round(median_ms(flat(timings["own"])) / median_ms(flat(timings["candidate"])), 4)

        measured, others, _ = least_loaded(factor, SCALING_TRIES)
        best = {"factor": measured, "others_cpu": others}
        if others is not None and not is_busy(others):
            if self.memory:
                remember_json(self.memory, key, best)
            return {**best, "remembered": False}
        self._loaded_scaling[threads] = assumed_scaling(threads, self.threads, measured, others)
        return self._loaded_scaling[threads]


def assumed_scaling(threads: int, own: int, loaded: float, others: float | None) -> dict[str, Any]:
    """The teacher's thread scaling (p50 at its `own` threads over p50 at `threads`) when it was never timed on a
    quiet machine and other processes are busy now. A timing under load is no use: the teacher's threads wait for
    the one that shares a busy core, so it reads 2-3x too slow at its own thread count. The factor is bounded
    instead, between perfect scaling (threads / own) and no gain from the extra threads (1); the estimate is
    their geometric middle. The loaded timing is kept as `loaded_factor`."""
    ends = sorted((threads / own, 1.0))
    return {
        "factor": round(math.sqrt(ends[0] * ends[1]), 4),
        "bounds": ends,
        "assumed": True,
        "loaded_factor": loaded,
        "others_cpu": others,
        "remembered": False,
    }


def measure(
    folder: Path,
    texts: list[str],
    threads: int | None,
    reference: TeacherClock | None = None,
    rounds: int = MEASURE_ROUNDS,
) -> dict[str, Any]:
    """Batch-1 p50 (ms, tokenization included) at `threads` over `texts`, and weight files in MB. With a
    `reference` (the teacher), the two take turns over `rounds` slices of `texts` (slimformer.timing; each turn
    lasting at least the clock's `turn_s`, its queries repeated), the teacher at the candidate's thread count,
    so load hits both alike; the teacher's quiet thread scaling
    (:class:`TeacherClock`) turns that into the speed-up over the teacher at its own thread count: returned as
    the median of the per-round ratios with a 90 % interval, with the teacher's p50 (`reference_p50_ms`), the
    scaling used, and the share of the CPU other processes took meanwhile (`others_cpu`).

    A multi-thread candidate timed while other processes were busy reads optimistic (the PyTorch teacher's threads
    wait at every barrier for the one sharing a busy core; ONNX Runtime's pool loses less), so both are timed again
    at 1 thread, on the free core, and the quiet speed-up is bounded from that (:func:`_single_thread_bound`).
    """
    from slimformer.artifacts import weights_size_bytes
    from slimformer.predictor import load
    from slimformer.timing import batch1_latencies_ms, flat, is_busy, median_ms, predictor_timer

    predictor = load(folder, threads=threads)
    batch1_latencies_ms(predictor, texts[:10], warmup=0)
    threads_timed = int(predictor.threads)
    timings, others = _turn_about(
        predictor_timer(predictor, reference.turn_s if reference else 0.0), reference, threads_timed, texts, rounds
    )
    result: dict[str, Any] = {
        "p50_ms": median_ms(flat(timings["candidate"])),
        "size_mb": round(weights_size_bytes(folder) / 1e6, 3),
        "others_cpu": others,
    }
    if reference is None:
        return result
    if threads_timed > 1 and is_busy(others):
        result["loaded_p50_ms"] = result["p50_ms"]
        return {**result, **_single_thread_bound(load(folder, threads=1), reference, texts, rounds, threads_timed)}
    return {**result, **_speedup(timings, {"threads_timed": threads_timed, **reference.scaling(threads_timed, texts)})}


def _turn_about(
    candidate: Any, reference: TeacherClock | None, threads: int, texts: list[str], rounds: int
) -> tuple[dict[str, list[list[float]]], float | None]:
    """Rounds of the candidate's timer and (with a reference) the teacher's at `threads`, taken in turns, and
    the share of the CPU other processes took meanwhile."""
    from slimformer.timing import OtherLoad, interleaved_latencies_ms, split_rounds

    timers = {"candidate": candidate}
    if reference is not None:
        timers["reference"] = reference.timer(threads)
    with OtherLoad() as other:
        timings = interleaved_latencies_ms(timers, split_rounds(texts, rounds if reference else 1), warmup=3)
    return timings, other.share


def _speedup(
    timings: dict[str, list[list[float]]], scaling: dict[str, Any], factors: tuple[float, float, float] | None = None
) -> dict[str, Any]:
    """The speed-up interval of turn-about `timings` in the budget's terms: the estimate, low and high ends
    times the teacher's thread scaling factor (or the three `factors`); the ratios as timed under `turn_about`."""
    from slimformer.timing import flat, median_ms, speedup_interval

    interval = speedup_interval(timings["reference"], timings["candidate"])
    factor = scaling["factor"]
    low_end, high_end = scaling.get("bounds", (factor, factor))  # an assumed scaling's bounds widen the interval
    estimate, low, high = factors or (factor, low_end, high_end)
    scaled = {"speedup": interval["speedup"] * estimate, "low": interval["low"] * low, "high": interval["high"] * high}
    return {
        "reference_p50_ms": round(median_ms(flat(timings["reference"])) * factor, 4),
        "speedup_interval": {
            **interval,
            **{key: round(value, 3) for key, value in scaled.items()},
            "turn_about": {key: interval[key] for key in scaled},  # the ratio as timed, before the scaling
        },
        "teacher_scaling": scaling,
    }


def _single_thread_bound(
    single: Any, reference: TeacherClock, texts: list[str], rounds: int, threads: int
) -> dict[str, Any]:
    """A busy machine's bound on a `threads`-thread candidate's quiet speed-up, from candidate and teacher timed
    at 1 thread each, turn about. With f the teacher's quiet p50 at its own threads over its p50 at 1 thread, and
    s the candidate's own (unknown) gain from its threads, the quiet speed-up is ratio x f x s. The estimate
    takes s = f^-1/2, the geometric middle of no gain and the teacher's gain. The interval's low end takes no gain
    (s = 1); its high end, which the screen's verdict uses, perfect scaling (s = `threads`): a candidate can gain
    more than the teacher (on the Ice Lake Xeon the PyTorch teacher gained 1.16x from its second thread, the fp32
    ONNX graph of `make demo`'s student 2.0x), so the teacher's gain bounds nothing. The candidate's p50 is the
    teacher's over the estimate. When f itself is not known (:func:`assumed_scaling`), its lower bound takes its
    place."""
    from slimformer.timing import predictor_timer

    timings, others = _turn_about(predictor_timer(single, reference.turn_s), reference, 1, texts, rounds)
    scaling = reference.scaling(1, texts)
    factor = scaling.get("bounds", [scaling["factor"]])[0]
    measured = _speedup(timings, {"threads_timed": 1, **scaling}, (factor**0.5, factor, factor * threads))
    measured["p50_ms"] = round(measured["reference_p50_ms"] / measured["speedup_interval"]["speedup"], 4)
    measured["single_thread_bound"] = {"others_cpu": others, "teacher_gain": round(1 / factor, 3), "threads": threads}
    return measured
