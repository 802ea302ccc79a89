"""The benchmark: every documented field, real values, label mapping by name, the plot and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from slimformer.benchmark import BenchmarkConfig, benchmark_models, display_names, write_plot
from slimformer.data import column
from slimformer.errors import ConfigError, ModelError
from slimformer.metrics import classification_metrics
from slimformer.predictor import load
from slimformer.timing import latency_summary

RESULT_FIELDS = {
    "model",
    "backend",
    "accuracy",
    "macro_f1",
    "in_scope_accuracy",
    "oos_recall",
    "latency_ms",
    "throughput_per_s",
    "size_mb",
    "parameters",
    "peak_rss_mb",
    "settings",
}


@pytest.fixture(scope="module")
def report(tiny_classifier_dir, clinc_slice):
    config = BenchmarkConfig(threads=1, latency_samples=25, warmup=3, isolate=False)
    return benchmark_models([tiny_classifier_dir], clinc_slice, config)


def test_report_has_every_field(report):
    assert set(report) >= {"environment", "results", "data"}
    environment = report["environment"]
    assert environment["threads"] == 1
    assert set(environment["isa"]) >= {"avx2", "avx512", "avx512_vnni", "avx512_bf16"}
    assert environment["versions"]["torch"]
    assert environment["cpu"]
    (result,) = report["results"]
    assert set(result) >= RESULT_FIELDS
    assert set(result["latency_ms"]) >= {"mean", "std", "p50", "p95", "p99"}
    assert result["latency_ms"]["n"] == 25
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"]
    assert result["throughput_per_s"] > 0
    assert result["settings"]["torch_threads"] == 1
    json.dumps(report)  # serialisable as written


def test_accuracy_matches_the_predictor(report, tiny_classifier_dir, clinc_slice):
    predictor = load(tiny_classifier_dir, threads=1)
    labels, _ = predictor.predict(column(clinc_slice.test, "text"))
    expected = classification_metrics(
        column(clinc_slice.test, "label"), [clinc_slice.labels.index(x) for x in labels], clinc_slice.oos_label_id
    )
    (result,) = report["results"]
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)


def test_size_and_parameters(report, tiny_classifier_dir):
    from transformers import AutoModelForSequenceClassification

    (result,) = report["results"]
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier_dir))
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    size = (tiny_classifier_dir / "model.safetensors").stat().st_size / 1e6
    assert result["size_mb"] == pytest.approx(size, abs=0.01)


def test_isolated_run_reports_its_own_process(tiny_classifier_dir, clinc_slice):
    config = BenchmarkConfig(threads=1, latency_samples=5, warmup=1, max_samples=16)
    report = benchmark_models([tiny_classifier_dir], clinc_slice, config)
    (result,) = report["results"]
    assert report["data"]["rows"] == 16
    assert result["peak_rss_mb"] > 50  # a fresh interpreter with torch loaded
    assert result["latency_ms"]["n"] == 5


def test_a_run_timed_under_load_says_how_much_cpu_others_took(tiny_classifier_dir, clinc_slice, capsys):
    import os
    import signal
    import subprocess
    import sys

    from slimformer.benchmark import print_table
    from slimformer.report import _environment_line

    config = BenchmarkConfig(threads=1, latency_samples=300, warmup=1, max_samples=16, rounds=3)
    # another job spinning on a core: started through a shell that exits, so it is not this process's child
    # (the benchmark counts its own children's CPU as its own)
    spawn = f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"
    hog = int(subprocess.run(["sh", "-c", spawn], capture_output=True, text=True, check=True).stdout)
    try:
        report = benchmark_models([tiny_classifier_dir], clinc_slice, config)
    finally:
        os.kill(hog, signal.SIGKILL)
    others = report["environment"]["others_cpu"]
    assert 0.6 / (os.cpu_count() or 1) <= others <= 1.0
    assert f"Other processes took {100 * others:.0f} % of the CPU" in _environment_line(report["environment"])
    print_table(report)
    assert f"warning: other processes took {100 * others:.0f} % of the CPU" in capsys.readouterr().out


def test_labels_are_matched_by_name_not_position(tiny_classifier, clinc_slice):
    """A model whose id order differs from the dataset's must score the same."""
    config_path = tiny_classifier / "config.json"
    base = BenchmarkConfig(threads=1, latency_samples=2, warmup=0, isolate=False)
    before = benchmark_models([tiny_classifier], clinc_slice, base)["results"][0]["accuracy"]
    # swap the names of ids 0 and 1 *and* the matching classifier rows: same model, different id order
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier))
    with torch.no_grad():
        model.classifier.weight[[0, 1]] = model.classifier.weight[[1, 0]].clone()
        model.classifier.bias[[0, 1]] = model.classifier.bias[[1, 0]].clone()
    id2label = dict(model.config.id2label)
    id2label[0], id2label[1] = id2label[1], id2label[0]
    model.config.id2label = id2label
    model.config.label2id = {v: k for k, v in id2label.items()}
    model.save_pretrained(tiny_classifier)
    assert json.loads(config_path.read_text())["id2label"]["0"] == clinc_slice.labels[1]
    after = benchmark_models([tiny_classifier], clinc_slice, base)["results"][0]["accuracy"]
    assert after == pytest.approx(before)


def test_model_for_other_labels_is_refused(tiny_classifier_dir, tmp_path):
    from slimformer.data import load_data

    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.csv").write_text("text,label\nhello,a\nbye,b\n")
    with pytest.raises(ModelError, match="lacks 2 of the dataset's 2"):
        benchmark_models([tiny_classifier_dir], load_data(str(tmp_path)), BenchmarkConfig(isolate=False))


def test_bad_config_values(clinc_slice, tiny_classifier_dir):
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        benchmark_models([tiny_classifier_dir], clinc_slice, BenchmarkConfig(threads=0))
    with pytest.raises(ConfigError, match="at least one model"):
        benchmark_models([], clinc_slice)


def test_latency_summary_values():
    summary = latency_summary(list(range(1, 101)))
    assert summary["mean"] == 50.5
    assert summary["p50"] == 50.5
    assert summary["p95"] == pytest.approx(95.05)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["std"] == pytest.approx(float(np.std(range(1, 101))), abs=1e-3)


def test_display_names_are_short_and_unique():
    assert display_names(["/a/x/model", "/b/y/model"]) == ["x/model", "y/model"]
    assert display_names(["/runs/teacher", "/runs/student"]) == ["teacher", "student"]


def test_plot_is_a_png_with_one_bubble_per_model(tmp_path):
    from PIL import Image

    results = [
        {"model": "teacher", "accuracy": 0.88, "size_mb": 90.0, "latency_ms": {"p50": 10.0}},
        {"model": "student", "accuracy": 0.86, "size_mb": 20.0, "latency_ms": {"p50": 2.0}},
    ]
    path = write_plot(results, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (960, 660)


def test_plot_labels_do_not_overlap_even_when_the_bubbles_do():
    """export and optimize often have the same accuracy and nearly the same latency: their labels must not collide."""
    from slimformer.plots import accuracy_latency_figure, label_slots

    results = [
        {"model": name, "accuracy": accuracy, "size_mb": size, "latency_ms": {"p50": p50}}
        for name, accuracy, size, p50 in [
            ("teacher", 0.8729, 91.1, 7.85),
            ("distill", 0.8751, 45.0, 3.9),
            ("prune", 0.8751, 20.1, 3.9),
            ("export", 0.8751, 20.3, 1.62),
            ("optimize", 0.8751, 20.3, 1.60),
            ("quantize", 0.8704, 8.4, 0.70),
        ]
    ]
    figure = accuracy_latency_figure(results)
    renderer = figure.canvas.get_renderer()
    labels = [text for text in figure.axes[0].texts]
    assert sorted(text.get_text() for text in labels) == sorted(
        f"{r['model']} · {r['size_mb']:.1f} MB" for r in results
    )
    from matplotlib.text import Text

    for text in labels:
        text.update_positions(renderer)
    boxes = [Text.get_window_extent(text, renderer) for text in labels]  # the text alone, not its leader line
    for i, box in enumerate(boxes):
        assert box.x1 <= figure.bbox.x1 and box.y0 >= 0 and box.y1 <= figure.bbox.y1  # inside the image
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other)
    crowded = label_slots([0.5] * 30)  # more labels than fit at the usual gap: squeezed, in order, inside
    assert crowded == sorted(crowded, reverse=True) and min(crowded) >= 0.02 and max(crowded) <= 0.98
    assert min(a - b for a, b in itertools.pairwise(crowded)) == pytest.approx(0.96 / 29)
    assert label_slots([0.9, 0.1]) == [0.9, 0.1]  # room enough: each label at its bubble's height
    # top to bottom in accuracy order, so leader lines do not cross needlessly
    order = [t.get_text().split(" · ")[0] for _, t in sorted(zip(boxes, labels, strict=True), key=lambda b: -b[0].y0)]
    assert order[0] in ("distill", "prune", "export", "optimize") and order[-1] == "quantize"


def test_latency_is_timed_in_interleaved_rounds(tiny_classifier_dir, tiny_classifier, clinc_slice, monkeypatch):
    """Models take turns, a slice of queries each per round, so load that comes and goes hits all alike."""
    import slimformer.benchmark as bench

    calls: list[tuple[str, int]] = []
    real_time_queries = bench.time_queries

    def spy(path: str, queries: list[str], warmup: int) -> list[float]:
        calls.append((path, len(queries)))
        return real_time_queries(path, queries, warmup)

    monkeypatch.setattr(bench, "time_queries", spy)
    config = BenchmarkConfig(threads=1, latency_samples=9, warmup=1, rounds=3, isolate=False, max_samples=16)
    report = bench.benchmark_models([tiny_classifier_dir, tiny_classifier], clinc_slice, config)
    first, second = str(tiny_classifier_dir), str(tiny_classifier)
    # the model going first rotates from round to round
    assert calls == [(first, 3), (second, 3), (second, 3), (first, 3), (first, 3), (second, 3)]
    assert [r["latency_ms"]["n"] for r in report["results"]] == [9, 9]
    assert bench._LOADED == {}  # every model was released
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        BenchmarkConfig(rounds=0).validate()


@pytest.mark.parametrize("max_length", [128, 6])
def test_single_text_fast_tokenization_matches_the_wrapper(tiny_classifier_dir, clinc_slice, max_length):
    """Batch-1 calls skip the transformers wrapper; the ids, types and mask must be the wrapper's exactly."""
    import torch

    predictor = load(tiny_classifier_dir, threads=1)
    predictor.max_length = max_length
    texts = [*column(clinc_slice.test, "text")[:20], "", "   ", "héllo wörld 你好 " * 20]
    for text in texts:
        wrapper = predictor.tokenizer([text], padding=True, truncation=True, max_length=max_length, return_tensors="np")
        fast = predictor.tokenize([text], "np")
        assert sorted(fast) == sorted(wrapper.keys())
        for name, array in fast.items():
            assert array.dtype == np.int64 and np.array_equal(array, wrapper[name]), (text, name)
        assert torch.equal(predictor.tokenize([text], "pt")["input_ids"], torch.from_numpy(wrapper["input_ids"]))
    assert max(len(predictor.tokenize([t], "np")["input_ids"][0]) for t in texts) <= max_length


def test_one_tokenization_gives_logits_and_the_token_count(tiny_classifier_dir, clinc_slice):
    predictor = load(tiny_classifier_dir, threads=1)
    predictor.max_length = 8
    short, long = "book a flight", " ".join(column(clinc_slice.train, "text")[:5])
    logits, counts = predictor.predict_logits_and_token_counts([short])
    assert np.allclose(logits, predictor.predict_logits([short]), atol=1e-6)
    assert counts == [len(predictor.tokenizer(short)["input_ids"])] and counts[0] < 8
    # a truncated text: its full length comes from the pieces the truncation cut off, in the same tokenization
    full = len(predictor.tokenizer(long)["input_ids"])
    assert full > 8 and predictor.predict_logits_and_token_counts([long])[1] == [full]
    assert predictor.predict_logits_and_token_counts([short, long])[1] == [counts[0], full]
    assert predictor.tokenize([long], "np")["input_ids"].shape == (1, 8)


def test_a_benchmark_process_ends_when_its_parent_is_gone() -> None:
    import subprocess
    import sys
    import time

    # the watcher is told a parent pid that is not this process's parent: as if the real one had died
    script = "import time; from slimformer.benchmark import _exit_with_parent; _exit_with_parent(1); time.sleep(30)"
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-c", script], timeout=20)
    assert finished.returncode == 1 and time.monotonic() - started < 15
