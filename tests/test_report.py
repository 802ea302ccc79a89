"""The report: numbers against the teacher, markdown, and an HTML page that renders in headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slimformer.pipeline import Variant
from slimformer.report import (
    ReportConfig,
    comparison_rows,
    headline,
    short_cpu_name,
    write_deployable_model,
    write_report,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def fake_result(model, accuracy, p50, size, backend="pytorch"):
    return {
        "model": model,
        "backend": backend,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "in_scope_accuracy": accuracy,
        "oos_recall": 0.5,
        "latency_ms": {"mean": p50, "std": 0.1, "p50": p50, "p95": p50 * 1.5, "p99": p50 * 2},
        "throughput_per_s": 1000 / p50,
        "size_mb": size,
        "parameters": 1000,
        "peak_rss_mb": 500.0,
    }


@pytest.fixture()
def benchmark():
    return {
        "environment": {
            "cpu": "Test CPU",
            "cpu_count": 2,
            "isa": {"avx2": True, "avx512": False},
            "threads": 2,
            "platform": "linux",
            "python": "3.11",
            "versions": {"torch": "2.13.0"},
        },
        "data": {"name": "clinc150:plus", "split": "test", "rows": 5500},
        "config": {"latency_samples": 1000, "warmup": 20, "batch_size": 32},
        "results": [fake_result("teacher", 0.87, 12.0, 90.0), fake_result("int8", 0.868, 1.0, 9.0, "onnxruntime")],
    }


def test_comparison_rows_are_relative_to_the_teacher(benchmark):
    teacher, int8 = comparison_rows(benchmark)
    assert teacher["speedup"] == pytest.approx(1.0)
    assert int8["speedup"] == pytest.approx(12.0)
    assert int8["shrink"] == pytest.approx(10.0)
    assert int8["accuracy_delta_points"] == pytest.approx(-0.2)


def row(model, p50, size, accuracy):
    return {"model": model, "p50_ms": p50, "size_mb": size, "accuracy": accuracy, "cpu": "Intel(R) Xeon(R) Processor"}


def test_headline_says_what_the_final_model_gains():
    rows = [row("teacher", 7.85, 91.1, 0.8729), row("distill", 4.1, 45.0, 0.875), row("quantize", 0.70, 8.4, 0.8704)]
    for r in rows:
        r["threads"] = 2
    assert headline(rows) == (
        "**Final model: quantize — 11.2x faster than the teacher (0.70 vs 7.85 ms p50), 10.8x smaller "
        "(8.4 vs 91.1 MB), −0.25 points accuracy (87.04 vs 87.29 %) · Intel Xeon, 2 threads**"
    )
    budgeted = headline(rows, budget="budget: p50 ≤ 1 ms — met")
    assert budgeted.endswith("· Intel Xeon, 2 threads · budget: p50 ≤ 1 ms — met**")
    rows[-1]["threads"] = 1
    assert headline(rows).endswith("· Intel Xeon, 1 thread**")
    worse = headline([row("teacher", 2.0, 10.0, 0.80), row("big", 3.0, 20.0, 0.805)])
    assert (
        "Final model: big — 1.5x slower than the teacher (3.00 vs 2.00 ms p50), 2.0x larger (20.0 vs 10.0 MB)" in worse
    )
    assert "+0.50 points accuracy (80.50 vs 80.00 %) · Intel Xeon**" in worse
    alone = headline([row("teacher", 7.85, 91.1, 0.8729)])
    assert (
        alone
        == "**Final model: teacher — 7.85 ms p50, 91.1 MB, 87.29 % accuracy (no other variant measured) · Intel Xeon**"
    )
    assert short_cpu_name("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz") == "Intel Xeon Platinum 8480+"
    assert short_cpu_name("AMD EPYC 7B13 64-Core Processor") == "AMD EPYC 7B13 64-Core"
    assert short_cpu_name("Test CPU") == "Test CPU"


def test_markdown_report_has_table_and_images(benchmark, tmp_path):
    variants = [Variant("int8", tmp_path, "quantize", {"history": [{"epoch": 1, "validation_accuracy": 0.8}]})]
    write_report(tmp_path, benchmark, variants, ReportConfig(title="My run"))
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# My run")
    expected = (
        "**Final model: int8 — 12.0x faster than the teacher (1.00 vs 12.00 ms p50), 10.0x smaller (9.0 vs 90.0 MB), "
        "−0.20 points accuracy (86.80 vs 87.00 %) · Test CPU, 2 threads**"
    )
    assert markdown.splitlines()[2] == expected  # the first line after the title
    assert "breakdown.png" not in markdown  # no profiled pass, no breakdown
    assert "| int8 | onnxruntime | 0.8680 |" in markdown
    assert "12.0x" in markdown and "10.0x" in markdown and "-0.20" in markdown
    assert "![Size on disk](sizes.png)" in markdown
    for image in ("accuracy_vs_latency.png", "sizes.png", "history.png"):
        assert (tmp_path / image).read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "Test CPU" in html
    assert html.index("<strong>Final model: int8 — 12.0x faster") < html.index("interleaved rounds")


def test_report_shows_the_latency_breakdown(benchmark, tmp_path):
    breakdown = {
        "queries": 200,
        "total_ms": 1.0,
        "tokenization_ms": 0.1,
        "ops_ms": {"MatMulInteger": 0.5, "Attention": 0.2, "LayerNormalization": 0.05},
        "node_counts": {"MatMulInteger": 36, "Attention": 6, "LayerNormalization": 13},
        "rest_ms": 0.15,
    }
    benchmark["results"][1]["breakdown"] = breakdown
    write_report(tmp_path, benchmark, [], ReportConfig())
    markdown = (tmp_path / "report.md").read_text()
    assert "(breakdown.png)" in markdown and (tmp_path / "breakdown.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3  # accuracy, sizes, breakdown


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_headless_chromium(benchmark, tmp_path):
    from playwright.sync_api import sync_playwright

    write_report(tmp_path, benchmark, [], ReportConfig())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((tmp_path / "report.html").as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("table#comparison tr").count()
        loaded = page.evaluate(
            "Array.from(document.images).map(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100)"
        )
        page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)
        browser.close()
    assert rows == 3  # header + teacher + int8
    assert loaded == [True, True]
    assert (tmp_path / "screenshot.png").stat().st_size > 10_000


def test_deployable_model_folder(tiny_classifier_dir, benchmark, tmp_path):
    variants = [Variant("teacher", tiny_classifier_dir, "input")]
    benchmark["results"][0]["model"] = "teacher"
    output = write_deployable_model(Path(tiny_classifier_dir), tmp_path / "model", benchmark, variants, ReportConfig())
    card = (output / "README.md").read_text()
    assert "accuracy 0.8700" in card and "p50 12.00 ms" in card
    assert "pip install -r requirements.txt" not in card  # a PyTorch folder needs the full install
    assert not (output / "requirements.txt").exists()
    assert "produced by `slimformer run`" in card and "in-scope accuracy 0.8700; OOS recall 0.5000" in card
    assert (output / "session.json").is_file() and (output / "labels.json").is_file()
    import slimformer

    labels, scores = slimformer.load(output, threads=1).predict(["set an alarm for 7am"])
    assert labels[0] in slimformer.load(tiny_classifier_dir, threads=1).labels
    assert 0 < scores[0] <= 1


def test_an_onnx_model_card_says_how_to_serve_it_lean_and_with_a_key(benchmark, tmp_path):
    onnx_dir = Path(__file__).resolve().parent / "data" / "tiny_onnx"
    benchmark["results"][0]["model"] = "int8"
    variants = [Variant("int8", onnx_dir, "quantize")]
    output = write_deployable_model(onnx_dir, tmp_path / "model", benchmark, variants, ReportConfig())
    card = (output / "README.md").read_text()
    assert "pip install -r requirements.txt` (this folder's file)" in card and "--api-key-file" in card
    repository = (Path(__file__).resolve().parents[1] / "requirements-serve.txt").read_text().splitlines()
    wanted = [line.split()[0] for line in repository if line.strip() and not line.startswith("#")]
    assert (output / "requirements.txt").read_text().split() == wanted  # the folder's copy of the lean install
    assert "Authorization: Bearer" in card and "MiB of RSS" in card


def test_a_model_card_from_auto_on_data_without_out_of_scope(benchmark, tmp_path):
    onnx_dir = Path(__file__).resolve().parent / "data" / "tiny_onnx"
    for row in benchmark["results"]:
        row["in_scope_accuracy"] = row["oos_recall"] = None  # a dataset without an out-of-scope label
    benchmark["results"][0]["model"] = "int8"
    variants = [Variant("int8", onnx_dir, "auto")]
    output = write_deployable_model(
        onnx_dir, tmp_path / "model", benchmark, variants, ReportConfig(), producer="slimformer auto"
    )
    card = (output / "README.md").read_text()
    assert "produced by `slimformer auto`" in card and "slimformer run" not in card
    assert "in-scope" not in card and "OOS recall" not in card and "—" not in card


def test_accuracy_latency_figure_uses_a_log_axis_and_shows_each_kind(benchmark):
    from slimformer.plots import accuracy_latency_figure

    figure = accuracy_latency_figure(benchmark["results"])
    axes = figure.get_axes()
    assert [ax.get_xscale() for ax in axes] == ["log", "log", "log"]
    assert [ax.get_ylabel() for ax in axes] == ["accuracy (%)", "in-scope accuracy (%)", "OOS recall (%)"]
    low, high = axes[0].get_xlim()
    assert low < 1.0 < 12.0 < high  # both the 1 ms and the 12 ms model inside, a decade apart
    for row in benchmark["results"]:
        row["in_scope_accuracy"] = row["oos_recall"] = None
    assert len(accuracy_latency_figure(benchmark["results"]).get_axes()) == 1
