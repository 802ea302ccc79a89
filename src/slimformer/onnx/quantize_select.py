"""`slimformer quantize --method auto`: dynamic and static INT8 of the same fp32 graph, side by side in one run.

Each method is built with the config's weight scales, and (``try_per_tensor``, the default) also with one scale per
weight matrix, which ONNX Runtime's int8 kernels run faster at batch 1 (BENCHMARKS.md, "Per-tensor weight scales")
at some cost in accuracy. All candidates are scored on the validation split against the fp32 graph and timed at
batch 1 on validation queries in interleaved rounds (the candidates take turns, the first one rotating each round,
so load that comes and goes on a shared machine hits all alike). The fastest one (p50) whose accuracy drop is within
the tolerance is kept: ``max_accuracy_drop`` when given (each candidate is then first made to fit it by the
accuracy-aware search), else :data:`~slimformer.onnx.quantize.AUTO_TOLERANCE_POINTS`. When none fits, the most
accurate one is kept with a warning, so a search that passes ``auto`` always gets a model and can read why from
metrics.json.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.artifacts import StageResult
from slimformer.errors import ModelError
from slimformer.onnx.runtime import parity

if TYPE_CHECKING:
    from slimformer.data import DataSplits
    from slimformer.onnx.ort_quantize import Int8Graph, Int8Job
    from slimformer.onnx.quantize import QuantizeConfig

AUTO_METHODS = ("dynamic", "static")
LATENCY_ROUNDS = 10  # turns per candidate: short turns spread a shared host's bursts of load over all alike
SAME_SPEED = 0.03  # p50s this close (relative) are a tie: run-to-run noise on a shared 2-core host is larger
LATENCY_WARMUP = 20  # untimed batch-1 calls per candidate before the first round


def weight_scales(config: Any) -> tuple[bool, ...]:
    """The `per_channel` settings `auto` tries: the config's, then per-tensor when ``try_per_tensor`` adds it."""
    return (True, False) if config.per_channel and config.try_per_tensor else (config.per_channel,)


def quantize_auto_folder(
    source: Path, folder: Path, config: QuantizeConfig, data: DataSplits | None, teacher: Path | None = None
) -> StageResult:
    """The quantize stage's `auto` method: every candidate of the ONNX folder `source` built in a scratch folder
    beside `folder`, the kept one written into `folder`."""
    import tempfile

    from slimformer.onnx.ort_quantize import Int8Job

    with tempfile.TemporaryDirectory(prefix=".work-", dir=folder.parent) as work:
        return quantize_auto(Int8Job(source, Path(work), config, data), folder)


def quantize_auto(job: Int8Job, folder: Path) -> StageResult:
    """Build every candidate, score and time them, write the kept one into `folder`; its metrics hold an
    ``auto`` block with each candidate's accuracy and latency, the CPU, the rule and the reason."""
    from slimformer.cpu import cpu_model, default_threads, isa_summary
    from slimformer.onnx.ort_quantize import candidate_name
    from slimformer.onnx.quantize import AUTO_TOLERANCE_POINTS
    from slimformer.timing import latency_summary

    config = job.config
    built, skipped = [], {}
    for per_channel in weight_scales(config):
        for method in AUTO_METHODS:
            try:
                built.append(job.build(method, per_channel))
            except ModelError as exc:  # e.g. a graph ORT's symbolic shape inference cannot type (static only)
                skipped[candidate_name(method, per_channel)] = str(exc)
    if not built:
        raise ModelError(f"no INT8 candidate could be built: {next(iter(skipped.values()))}")
    for name, reason in skipped.items():
        warnings.warn(f"quantize auto: {name} skipped: {reason}", stacklevel=2)
    graphs = {graph.name: graph for graph in built}
    candidates = {name: score_candidate(job, graph) for name, graph in graphs.items()}
    threads = config.threads or default_threads()
    timings = interleaved_latency_ms(job, built, threads)
    for name, candidate in candidates.items():
        candidate["latency_ms"] = latency_summary(timings[name])
    given = config.max_accuracy_drop is not None
    tolerance = config.max_accuracy_drop if given else AUTO_TOLERANCE_POINTS
    kept, reason = choose(candidates, tolerance)
    report = {
        "kept": kept,
        "reason": reason,
        "rule": "lowest batch-1 p50 among the candidates within the tolerance; none within: the most accurate",
        "tolerance_points": tolerance,
        "tolerance_from": "max_accuracy_drop" if given else "default",
        "reference_accuracy": job.reference_accuracy,
        "candidates": candidates,
        "skipped": skipped,  # candidates that could not be built, and why
        "latency": {
            "texts": "validation split",
            "queries": len(timings[kept]),
            "rounds": LATENCY_ROUNDS,
            "threads": threads,
            "order": "interleaved, first candidate rotating each round",
        },
        "cpu": {"model": cpu_model(), "isa": isa_summary()},
    }
    return job.write(graphs[kept], folder, extra={"auto": report})


def score_candidate(job: Int8Job, graph: Int8Graph) -> dict[str, Any]:
    """A candidate's format and weight scales, validation accuracy, drop vs fp32 in points, and argmax agreement
    with fp32."""
    from slimformer.onnx.ort_quantize import graph_format

    logits = job.evaluation.logits(graph.path)
    accuracy = job.evaluation.accuracy(logits)
    assert accuracy is not None and job.reference_accuracy is not None  # auto runs with data only
    return {
        "format": graph_format(graph.method, job.config.quant_format, job.config.dynamic_attention),
        "per_channel": graph.per_channel,
        "accuracy": accuracy,
        "drop_points": round(100 * (job.reference_accuracy - accuracy), 3),
        "argmax_agreement": parity(job.reference_logits, logits)["argmax_agreement"],
        "quantize_seconds": round(graph.quantize_seconds, 1),
        **({"accuracy_aware_fits": graph.search["fits"]} if graph.search is not None else {}),
    }


def interleaved_latency_ms(job: Int8Job, graphs: list[Int8Graph], threads: int) -> dict[str, list[float]]:
    """Batch-1 milliseconds of each graph (tokenization included) over the same validation queries, timed in
    :data:`LATENCY_ROUNDS` rounds in which the graphs take turns (slimformer.timing)."""
    from slimformer.predictor import OnnxPredictor
    from slimformer.timing import (
        batch1_latencies_ms,
        flat,
        interleaved_latencies_ms,
        predictor_timer,
        sample_queries,
        split_rounds,
    )

    config = job.config
    predictors = {
        graph.name: OnnxPredictor.from_file(graph.path, job.fp32_dir, threads=threads, max_length=config.max_length)
        for graph in graphs
    }
    queries = sample_queries(job.evaluation.texts, config.latency_samples, config.seed)
    for predictor in predictors.values():
        batch1_latencies_ms(predictor, queries[:LATENCY_WARMUP], warmup=0)
    timers = {name: predictor_timer(predictor) for name, predictor in predictors.items()}
    rounds = interleaved_latencies_ms(timers, split_rounds(queries, LATENCY_ROUNDS))
    return {name: flat(times) for name, times in rounds.items()}


def choose(candidates: dict[str, dict[str, Any]], tolerance: float) -> tuple[str, str]:
    """The kept candidate's name and why: the lowest ``latency_ms.p50`` among those whose ``drop_points`` is
    within `tolerance`, where p50s within SAME_SPEED of the fastest count as a tie that the smaller drop breaks
    (so timing noise does not flip the pick between equally fast graphs); when none is within the tolerance,
    the smallest drop (ties: the faster), with a warning."""

    def p50(name: str) -> float:
        return candidates[name]["latency_ms"]["p50"]

    def drop(name: str) -> float:
        return candidates[name]["drop_points"]

    by_speed = sorted(candidates, key=p50)
    speeds = " vs ".join(f"{name} {p50(name):.3f} ms" for name in by_speed)
    within = [name for name in by_speed if drop(name) <= tolerance]
    outside = [name for name in by_speed if name not in within]
    drops = ", ".join(f"{name} drops {drop(name):g}" for name in outside)
    if within:
        fastest = p50(within[0])
        tied = [name for name in within if p50(name) <= fastest * (1 + SAME_SPEED)]
        kept = min(tied, key=lambda name: (drop(name), p50(name)))
        tie = (
            f" ({' and '.join(tied)} within {100 * SAME_SPEED:g} % of each other's p50: the more accurate)"
            if kept != within[0]
            else ""
        )
        if len(within) == len(candidates):
            scope = "both" if len(within) == 2 else "all"
            return kept, f"{speeds}, {scope} within {tolerance:g} pts: kept {kept}{tie}"
        return kept, f"{speeds}; {drops} pts (> {tolerance:g}): kept {kept}{tie}"
    kept = min(candidates, key=lambda name: (drop(name), p50(name)))
    warnings.warn(
        f"no INT8 candidate is within {tolerance:g} points of fp32 ({drops}): keeping the more accurate, {kept}",
        stacklevel=3,
    )
    return kept, f"{speeds}; none within {tolerance:g} pts ({drops}): kept the more accurate, {kept}"
