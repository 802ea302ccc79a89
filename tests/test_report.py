"""The report: numbers against the teacher, markdown, and an HTML page that renders in headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slimformer.pipeline import Variant
from slimformer.report import ReportConfig, comparison_rows, write_deployable_model, write_report

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


def test_markdown_report_has_table_and_images(benchmark, tmp_path):
    variants = [Variant("int8", tmp_path, "quantize", {"history": [{"epoch": 1, "validation_accuracy": 0.8}]})]
    write_report(tmp_path, benchmark, variants, ReportConfig(title="My run"))
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# My run")
    assert "| int8 | onnxruntime | 0.8680 |" in markdown
    assert "12.0x" in markdown and "10.0x" in markdown and "-0.20" in markdown
    assert "![Size on disk](sizes.png)" in markdown
    for image in ("accuracy_vs_latency.png", "sizes.png", "history.png"):
        assert (tmp_path / image).read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "Test CPU" in html


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
    assert (output / "session.json").is_file() and (output / "labels.json").is_file()
    import slimformer

    labels, scores = slimformer.load(output, threads=1).predict(["set an alarm for 7am"])
    assert labels[0] in slimformer.load(tiny_classifier_dir, threads=1).labels
    assert 0 < scores[0] <= 1
