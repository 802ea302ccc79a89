"""Recipes: validation errors are one line, finished stages are reused, a killed stage is redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slimformer.errors import ConfigError
from slimformer.pipeline import load_recipe, parse_recipe, run_recipe


def write_recipe(path: Path, model: Path, data: Path, stages: list) -> Path:
    path.write_text(yaml.safe_dump({"model": str(model), "data": str(data), "seed": 1, "threads": 1, "stages": stages}))
    return path


FAST_FINETUNE = {"stage": "finetune-teacher", "epochs": 1, "learning_rate": 1e-3, "batch_size": 16}
FAST_BENCH = {"latency_samples": 5, "warmup": 1, "max_samples": 24}


def test_default_recipe_is_valid_and_commented():
    recipe = load_recipe()
    kinds = [stage.kind for stage in recipe.stages]
    assert kinds[0] == "finetune-teacher"
    assert kinds[-2:] == ["benchmark-all", "report"]
    text = Path(recipe.source).read_text()
    assert text.count("#") >= 20  # every key explained


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stages": [{"stage": "distil"}]}, "unknown stage 'distil'"),
        ({"stages": [{"stage": "finetune-teacher", "epoch": 2}]}, "unknown option 'epoch'"),
        ({"stages": [{"stage": "finetune-teacher", "epochs": -1}]}, "epochs must be > 0"),
        ({"stages": [{"stage": "benchmark-all", "threads": 0}]}, "threads must be >= 1"),
        ({"stages": []}, "'stages' must be a non-empty list"),
        ({"stages": [{"epochs": 1}]}, "must be a mapping with a 'stage' key"),
        ({"modle": "x", "stages": ["report"]}, "unknown recipe key 'modle'"),
        ([1, 2], "a recipe is a mapping"),
    ],
)
def test_recipe_validation_errors(raw, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_recipe(raw)
    assert "\n" not in str(caught.value)


def test_cli_reports_bad_recipe_in_one_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - stage: quantise\n")
    result = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "run", str(recipe), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown stage 'quantise'" in result.stderr
    (tmp_path / "broken.yaml").write_text("stages: [\n")
    result = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "run", str(tmp_path / "broken.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_run_takes_the_data_columns_its_error_names(tmp_path):
    # the missing-column error tells `run` users to pass --text-column / --label-column: both must exist
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"query {i},{'greet' if i % 2 else 'leave'}\n" for i in range(20))
    for split in ("train", "test"):
        (data / f"{split}.csv").write_text("utterance,intent\n" + rows)
    (tmp_path / "r.yaml").write_text("stages:\n  - stage: report\n")
    command = [sys.executable, "-m", "slimformer.cli", "run", str(tmp_path / "r.yaml"), "--data", str(data)]
    command += ["--model", str(tmp_path / "no-model"), "--output", str(tmp_path / "out")]
    without = subprocess.run(command, capture_output=True, text=True)
    assert without.returncode == 2
    assert "no column 'text'" in without.stderr and "use --text-column / --label-column" in without.stderr
    named = subprocess.run(
        [*command, "--text-column", "utterance", "--label-column", "intent"], capture_output=True, text=True
    )
    assert named.returncode == 2 and named.stderr.strip().count("\n") == 0
    assert "no column" not in named.stderr and "model folder not found" in named.stderr  # the data loaded: next check


def test_run_reuses_finished_stages(tiny_base_dir, clinc_slice_dir, tmp_path, monkeypatch):
    import slimformer.finetune

    recipe = load_recipe(
        write_recipe(
            tmp_path / "r.yaml",
            tiny_base_dir,
            clinc_slice_dir,
            [
                FAST_FINETUNE,
                {"stage": "benchmark-teacher", **FAST_BENCH},
                {"stage": "benchmark-all", **FAST_BENCH},
                "report",
            ],
        )
    )
    calls = []
    real = slimformer.finetune.finetune
    monkeypatch.setattr(slimformer.finetune, "finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = run_recipe(recipe, tmp_path / "run")
    assert [s["cached"] for s in first["stages"]] == [False, False, False, False]
    second = run_recipe(recipe, tmp_path / "run")
    assert [s["cached"] for s in second["stages"]][:3] == [True, True, True]
    assert len(calls) == 1
    assert (tmp_path / "run" / "report.html").is_file()
    assert (tmp_path / "run" / "model" / "README.md").is_file()
    assert json.loads((tmp_path / "run" / "model" / "labels.json").read_text())[0] == "alarm"


def kill_run_when(recipe: Path, output: Path, pattern: str, timeout: float) -> None:
    """`slimformer run RECIPE` in its own process, killed with SIGKILL a second after a stage folder matching
    `pattern` appears in OUTPUT/stages (a stage mid-way)."""
    env = {**os.environ, "SLIMFORMER_NO_PROGRESS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "slimformer.cli", "run", str(recipe), "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not list((output / "stages").glob(pattern)):
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_stage_leaves_no_finished_artifact_and_is_redone(tiny_base_dir, clinc_slice_dir, tmp_path):
    """kill -9 in the middle of fine-tuning; the next run redoes only that stage."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_base_dir,
        clinc_slice_dir,
        [{**FAST_FINETUNE, "epochs": 400}, {"stage": "benchmark-teacher", **FAST_BENCH}],
    )
    stages = tmp_path / "run" / "stages"
    kill_run_when(recipe, tmp_path / "run", ".tmp-*", timeout=120)
    assert list(stages.glob(".tmp-*")), "the stage should have been mid-way"
    assert not [p for p in stages.iterdir() if not p.name.startswith(".")]  # nothing looks finished

    quick = load_recipe(recipe)
    quick.stages[0].options["epochs"] = 1
    summary = run_recipe(quick, tmp_path / "run")
    assert [s["cached"] for s in summary["stages"]] == [False, False]
    assert not list(stages.glob(".tmp-*"))
    assert len([p for p in stages.iterdir() if (p / "metrics.json").is_file()]) == 2


def test_quick_recipe_through_every_model_stage(
    tiny_classifier_dir, clinc_slice_dir, tmp_path, private_cache_one_thread
):
    """distill -> prune (structured, heads and FFN) -> prune vocab -> export -> optimize -> quantize -> report
    under --quick: each stage's model feeds the next, and the deployable model is the INT8 graph."""
    stages = [
        {"stage": "distill", "student_layers": 1, "epochs": 3, "batch_size": 16},
        {"stage": "prune", "method": "structured", "heads_fraction": 0.5, "ffn_fraction": 0.5, "epochs": 1},
        {"stage": "prune", "name": "vocab", "method": "vocab", "vocab_clusters": 8},
        "export",
        "optimize",
        {"stage": "quantize", "method": "dynamic"},
        {"stage": "benchmark-all", **FAST_BENCH, "isolate": False},
        "report",
    ]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_classifier_dir, clinc_slice_dir, stages)
    summary = run_recipe(load_recipe(recipe), tmp_path / "run", quick=True)
    kinds = [v["stage"] for v in summary["variants"]]
    assert kinds == ["input", "distill", "prune", "prune", "export", "optimize", "quantize"]
    distilled = json.loads((Path(summary["variants"][1]["path"]) / "metrics.json").read_text())
    assert distilled["config"]["epochs"] == 1.0  # --quick capped the recipe's 3 epochs
    assert distilled["teacher_logits"]["hit"] is False  # distilled from the run's teacher
    pruned = json.loads((Path(summary["variants"][2]["path"]) / "config.json").read_text())
    assert pruned["model_type"] == "slimbert" and pruned["num_attention_heads"] == 2
    final = json.loads((Path(summary["final_model"]) / "metrics.json").read_text())
    assert final["quantized_nodes"].get("MatMulInteger", 0) + final["quantized_nodes"].get("QAttention", 0) > 0
    session = json.loads((tmp_path / "run" / "model" / "session.json").read_text())
    assert session["max_length"] == 64  # the tiny tokenizer's limit, inherited from stage to stage
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("| onnxruntime |") == 3 and "| quantize |" in report


def test_a_run_killed_mid_stage_resumes_with_the_finished_stages_reused(tiny_base_dir, clinc_slice_dir, tmp_path):
    """kill -9 during the second stage, then the same recipe, unchanged: the first stage's folder is reused as it
    was (same mtimes), only the killed stage is redone."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_base_dir,
        clinc_slice_dir,
        [FAST_FINETUNE, {"stage": "distill", "student_layers": 1, "epochs": 25, "batch_size": 8}],
    )
    stages = tmp_path / "run" / "stages"
    kill_run_when(recipe, tmp_path / "run", ".tmp-*distill*", timeout=180)
    finished = [p for p in stages.iterdir() if not p.name.startswith(".")]
    assert [p.name.split("-")[1] for p in finished] == ["finetune"], "the kill should land in the distillation"
    before = {p: p.stat().st_mtime_ns for p in finished[0].rglob("*")}

    summary = run_recipe(load_recipe(recipe), tmp_path / "run")
    assert [s["cached"] for s in summary["stages"]] == [True, False]
    assert {p: p.stat().st_mtime_ns for p in finished[0].rglob("*")} == before
    assert not list(stages.glob(".tmp-*"))
