"""The latency breakdown: ONNX Runtime's own profiler (and torch.profiler) split batch-1 time into tokenization,
operator types and the rest; the parts add up, the operators are the graph's, and the timed latency stays clean."""

from __future__ import annotations

import collections
import json
import shutil
import threading
import time
from pathlib import Path

import onnx
import pytest

from slimformer.benchmark import BenchmarkConfig, benchmark_models
from slimformer.plots import write_breakdown_plot
from slimformer.predictor import OnnxPredictor, load, session_options
from slimformer.profiling import PROFILE_QUERIES, onnx_trace_summary, profile_predictor
from slimformer.timing import WARMUP_MIN_S, batch1_latencies_ms, wait_until_idle

TINY_ONNX = Path(__file__).resolve().parent / "data" / "tiny_onnx"
TEXTS = [item["text"] for item in json.loads((TINY_ONNX / "reference.json").read_text())["texts"]]
QUERIES = TEXTS * 15


def assert_parts_add_up(breakdown: dict, queries: int) -> None:
    assert breakdown["queries"] == queries
    assert breakdown["total_ms"] > 0 and breakdown["tokenization_ms"] > 0
    assert breakdown["ops_ms"] and all(ms >= 0 for ms in breakdown["ops_ms"].values())
    assert breakdown["rest_ms"] >= 0
    parts = breakdown["tokenization_ms"] + sum(breakdown["ops_ms"].values()) + breakdown["rest_ms"]
    assert parts == pytest.approx(breakdown["total_ms"], abs=1e-3 + 1e-4 * len(breakdown["ops_ms"]))
    assert list(breakdown["ops_ms"].values()) == sorted(breakdown["ops_ms"].values(), reverse=True)
    assert set(breakdown["node_counts"]) == set(breakdown["ops_ms"])


def test_onnx_breakdown_parts_add_up_to_the_measured_time() -> None:
    breakdown = profile_predictor(load(TINY_ONNX), QUERIES)
    assert_parts_add_up(breakdown, len(QUERIES))
    assert breakdown["backend"] == "onnxruntime" and breakdown["threads"] == 1
    # ONNX Runtime's clock against ours: the operators run inside its run, and its run inside our call
    operators = sum(breakdown["ops_ms"].values())
    assert 0 < operators <= breakdown["runtime_ms"] + 1e-3
    assert breakdown["runtime_ms"] <= breakdown["total_ms"] - breakdown["tokenization_ms"] + 1e-3


def test_unoptimized_graph_reports_exactly_its_own_nodes() -> None:
    predictor = OnnxPredictor.from_file(TINY_ONNX / "model.onnx", TINY_ONNX, graph_optimization_level="disable")
    breakdown = profile_predictor(predictor, QUERIES)
    graph = collections.Counter(node.op_type for node in onnx.load(str(TINY_ONNX / "model.onnx")).graph.node)
    assert breakdown["node_counts"] == dict(graph)


def test_optimized_graph_reports_the_nodes_onnx_runtime_runs(tmp_path: Path) -> None:
    """At the default level ONNX Runtime fuses nodes (MatMul + Add -> Gemm): the breakdown names what it runs."""
    options = session_options(1, "all")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    import onnxruntime as ort

    ort.InferenceSession(str(TINY_ONNX / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    breakdown = profile_predictor(load(TINY_ONNX), QUERIES)
    assert breakdown["node_counts"] == dict(optimized)
    assert "Gemm" in breakdown["ops_ms"] and "MatMul" not in breakdown["ops_ms"]


def test_trace_summary_keeps_only_the_timed_runs() -> None:
    def node(name: str, op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    trace = [
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50, "args": {}},
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 40, "args": {}},  # warm-up
        node("mm_0", "MatMul", 105, 30),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40, "args": {}},
        node("mm_0", "MatMul", 205, 10),
        node("mm_1", "MatMul", 216, 12),
        node("add_0", "Add", 230, 5),
        {"cat": "Session", "name": "model_run", "ts": 300, "dur": 40, "args": {}},
        node("mm_0", "MatMul", 305, 11),
        node("mm_1", "MatMul", 317, 9),
        node("add_0", "Add", 330, 4),
    ]
    runs, ops, counts = onnx_trace_summary(trace, skip_runs=1)
    assert runs == 2
    assert ops == {"MatMul": 42.0, "Add": 9.0}
    assert counts == {"MatMul": 2, "Add": 1}
    assert onnx_trace_summary(trace)[1] == {"MatMul": 72.0, "Add": 9.0}


def test_torch_breakdown_from_torch_profiler(tiny_classifier_dir: Path, clinc_slice) -> None:
    from slimformer.data import column

    queries = column(clinc_slice.test, "text")[:30]
    breakdown = profile_predictor(load(tiny_classifier_dir, threads=1), queries)
    assert_parts_add_up(breakdown, 30)
    assert breakdown["profiler"] == "torch.profiler"
    assert "aten::addmm" in breakdown["ops_ms"]  # the Linear layers
    assert breakdown["node_counts"]["aten::addmm"] >= 2 * 6  # 2 layers x (q, k, v, out, ffn in, ffn out)


def write_three_intents(folder: Path) -> Path:
    """Train/validation/test csv files over the tiny ONNX model's three labels."""
    rows = [("what is my balance", "balance"), ("book a flight to Rome", "book_flight"), ("weather now", "weather")]
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        lines = ["text,label", *(f"{text} {i},{label}" for i in range(8) for text, label in rows)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def three_intents(tmp_path_factory: pytest.TempPathFactory):
    from slimformer.data import load_data

    return load_data(str(write_three_intents(tmp_path_factory.mktemp("three_intents"))))


def test_benchmark_profile_is_a_separate_pass(three_intents, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(TINY_ONNX, tmp_path / "tiny"))
    config = BenchmarkConfig(threads=1, latency_samples=30, warmup=2, rounds=2, isolate=False)
    plain = benchmark_models([folder], three_intents, config)["results"][0]
    assert "breakdown" not in plain
    config.profile = True
    report = benchmark_models([folder], three_intents, config)
    (result,) = report["results"]
    assert result["latency_ms"]["n"] == 30  # the timed latency is the same pass as without profiling
    assert_parts_add_up(result["breakdown"], min(30, PROFILE_QUERIES))
    json.dumps(report)
    assert write_breakdown_plot([result], tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert write_breakdown_plot([plain], tmp_path / "none.png") is None


def test_cli_benchmark_profile(tmp_path: Path, capsys) -> None:
    from slimformer.cli import main

    data = write_three_intents(tmp_path / "data")
    args = ["benchmark", str(TINY_ONNX), "--data", str(data), "--threads", "1", "--latency-samples", "12"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--warmup", "1", "--no-isolate", "--profile", "--output", str(tmp_path / "r.json")])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    breakdown = json.loads((tmp_path / "r.json").read_text())["results"][0]["breakdown"]
    assert_parts_add_up(breakdown, 12)
    assert "ms/query profiled" in out  # the printed line (rich may wrap it; the top ops vary run to run)
    assert "Gemm" in breakdown["ops_ms"]


class CountingPredictor:
    """A predictor that takes 1 ms a call and counts its calls (the timing loop is what is tested)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        self.calls += 1
        time.sleep(0.001)
        return ["label"] * len(texts), [1.0] * len(texts)


def test_warm_up_lasts_long_enough_and_none_means_none() -> None:
    warmed = CountingPredictor()
    timings = batch1_latencies_ms(warmed, ["a", "b", "c"], warmup=2)
    assert len(timings) == 3 and all(ms >= 1.0 for ms in timings)
    # at 1 ms a call, 2 calls cannot fill the minimum warm-up time: it cycles through the queries for longer
    assert warmed.calls - 3 >= 0.5 * WARMUP_MIN_S / 0.001
    cold = CountingPredictor()
    assert len(batch1_latencies_ms(cold, ["a", "b"], warmup=0)) == 2 and cold.calls == 2


def test_wait_until_idle_waits_for_a_spinning_thread() -> None:
    deadline = time.perf_counter() + 0.15

    def spin() -> None:  # like a thread pool's idle worker spinning after the last run
        while time.perf_counter() < deadline:
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    waited = wait_until_idle()
    worker.join()
    assert waited >= 0.1
    assert wait_until_idle() < 0.05  # nothing spins any more
