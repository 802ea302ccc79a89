"""Where batch-1 time goes (the timing itself is slimformer.timing).

The breakdown is a profiled pass, run apart from the timed latency (a profiler slows the model down): every
query is tokenized and run as `Predictor.predict` runs it, our clock around the tokenization and around the
whole call, while the runtime's own profiler times each operator. ONNX Runtime: `SessionOptions.enable_profiling`,
the `dur` of its JSON trace's Node events summed by `args.op_name`; PyTorch: torch.profiler's self CPU time per
operator. The rest is what neither accounts for: wall time - tokenization - operators (session overhead, the
input feed, the softmax). Every part is in ms per query; the parts add up to the profiled pass's wall time.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.errors import ModelError

PROFILE_QUERIES = 200  # batch-1 queries of the profiled pass
PROFILE_WARMUP = 10  # untimed calls first (the profiled session is a fresh one)


def profile_predictor(predictor: Any, queries: list[str], warmup: int = PROFILE_WARMUP) -> dict[str, Any]:
    """The latency breakdown of `predictor` over `queries` at batch 1 (ms per query per part, see the module
    docstring): ``{"total_ms", "tokenization_ms", "ops_ms": {op: ms}, "node_counts": {op: n}, "rest_ms", ...}``."""
    if not queries:
        raise ModelError("a latency breakdown needs at least one query")
    if predictor.backend == "onnxruntime":
        return _profile_onnx(predictor, list(queries), warmup)
    if predictor.backend == "pytorch":
        return _profile_torch(predictor, list(queries), warmup)
    raise ModelError(f"no latency breakdown for the {predictor.backend!r} backend")


def _predict_calls(predictor: Any, queries: list[str]) -> tuple[float, float]:
    """Seconds of every `predict([text])` call in all and of their tokenization, each call made as
    Predictor.predict makes it (tokenize, model, softmax, labels)."""
    from slimformer.predictor import softmax

    total = tokenization = 0.0
    for text in queries:
        tick = time.perf_counter()
        inputs = predictor.tokenize([text], predictor.input_format)
        tokenized = time.perf_counter()
        probs = softmax(predictor.logits_from_inputs(inputs))
        best = probs.argmax(axis=-1)
        [(predictor.labels[i], float(probs[row, i])) for row, i in enumerate(best)]
        done = time.perf_counter()
        total += done - tick
        tokenization += tokenized - tick
    return total, tokenization


def _profile_onnx(predictor: Any, queries: list[str], warmup: int) -> dict[str, Any]:
    import onnxruntime as ort

    from slimformer.predictor import session_options

    options = session_options(predictor.threads, predictor.graph_optimization, predictor.spinning)
    timed_session = predictor.session
    with tempfile.TemporaryDirectory(prefix="slimformer-profile-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(predictor.onnx_path), options, providers=["CPUExecutionProvider"])
        predictor.session = session  # the same calls, through the profiled session
        try:
            _predict_calls(predictor, queries[:warmup])
            total, tokenization = _predict_calls(predictor, queries)
        finally:
            predictor.session = timed_session
            trace = json.loads(Path(session.end_profiling()).read_text())
    runs, ops_us, counts = onnx_trace_summary(trace, skip_runs=len(queries[:warmup]))
    if runs != len(queries):
        raise ModelError(f"the ONNX Runtime trace holds {runs} timed runs, expected {len(queries)}")
    runtime_us = sum(e["dur"] for e in _model_runs(trace)[-runs:])
    breakdown = _breakdown(
        total * 1000, tokenization * 1000, {op: us / 1000 for op, us in ops_us.items()}, counts, len(queries)
    )
    # ONNX Runtime's own time per run; the rest beyond it is Python (input feed, softmax)
    breakdown["runtime_ms"] = round(runtime_us / 1000 / len(queries), 4)
    return {"backend": "onnxruntime", "profiler": "onnxruntime", "threads": predictor.threads, **breakdown}


def _model_runs(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"), key=_ts)


def _ts(event: dict[str, Any]) -> float:
    return float(event["ts"])


def onnx_trace_summary(trace: list[dict[str, Any]], skip_runs: int = 0) -> tuple[int, dict[str, float], dict]:
    """From an ONNX Runtime profile (its JSON events): the number of runs kept (all but the first `skip_runs`),
    the microseconds of their Node events summed by operator type (`args.op_name`), and the number of graph
    nodes of each type (distinct node names)."""
    runs = _model_runs(trace)[skip_runs:]
    windows = [(_ts(r), _ts(r) + float(r["dur"])) for r in runs]
    starts = np.array([start for start, _ in windows])
    ops: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    for event in trace:
        if event.get("cat") != "Node" or "op_name" not in event.get("args", {}) or not windows:
            continue
        index = int(np.searchsorted(starts, _ts(event), side="right")) - 1
        if index < 0 or _ts(event) > windows[index][1]:
            continue  # a warm-up run's node
        op = event["args"]["op_name"]
        ops[op] = ops.get(op, 0.0) + float(event["dur"])
        nodes.setdefault(op, set()).add(event["name"].removesuffix("_kernel_time"))
    return len(runs), ops, {op: len(names) for op, names in nodes.items()}


def _profile_torch(predictor: Any, queries: list[str], warmup: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    _predict_calls(predictor, queries[:warmup])
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        total, tokenization = _predict_calls(predictor, queries)
    ops: dict[str, float] = {}
    counts: dict[str, float] = {}
    for event in profiler.key_averages():
        if event.self_cpu_time_total > 0:  # self time: a nested operator's time is counted once, in itself
            ops[event.key] = event.self_cpu_time_total / 1000
            counts[event.key] = round(event.count / len(queries))
    breakdown = _breakdown(total * 1000, tokenization * 1000, ops, counts, len(queries))
    return {"backend": "pytorch", "profiler": "torch.profiler", "threads": predictor.threads, **breakdown}


def _breakdown(
    total_ms: float, tokenization_ms: float, ops_ms: dict[str, float], counts: dict[str, Any], queries: int
) -> dict[str, Any]:
    """Totals over `queries` calls as milliseconds per query; operator types slowest first."""
    per_query = {op: ms / queries for op, ms in sorted(ops_ms.items(), key=lambda item: -item[1])}
    rest = (total_ms - tokenization_ms) / queries - sum(per_query.values())
    return {
        "queries": queries,
        "total_ms": round(total_ms / queries, 4),
        "tokenization_ms": round(tokenization_ms / queries, 4),
        "ops_ms": {op: round(ms, 4) for op, ms in per_query.items()},
        "node_counts": {op: counts.get(op, 0) for op in per_query},
        "rest_ms": round(rest, 4),
    }


def breakdown_parts(breakdown: dict[str, Any], ops_shown: list[str]) -> dict[str, float]:
    """The segments of one bar: tokenization, each of `ops_shown`, the other operators together, the rest."""
    ops = breakdown["ops_ms"]
    parts = {"tokenization": breakdown["tokenization_ms"], **{op: ops.get(op, 0.0) for op in ops_shown}}
    parts["other ops"] = sum(ms for op, ms in ops.items() if op not in ops_shown)
    parts["rest (runtime overhead)"] = breakdown["rest_ms"]
    return parts


def print_breakdowns(results: list[dict[str, Any]], echo: Callable[[str], Any] = print) -> None:
    """One line per profiled model: its parts, the slowest operator types first with their node counts."""
    for result in results:
        breakdown = result.get("breakdown")
        if not breakdown:
            continue
        ops = ", ".join(
            f"{op} {ms:.3f} (x{breakdown['node_counts'].get(op, 0)})"
            for op, ms in list(breakdown["ops_ms"].items())[:6]
        )
        echo(
            f"{result['model']}: {breakdown['total_ms']:.3f} ms/query profiled = tokenization "
            f"{breakdown['tokenization_ms']:.3f} + operators {sum(breakdown['ops_ms'].values()):.3f} "
            f"[{ops}{', ...' if len(breakdown['ops_ms']) > 6 else ''}] + rest {breakdown['rest_ms']:.3f}"
        )
