"""The stage contract: a stage added as one config class + one function + one registry line is a CLI command and
a recipe stage; regression tests for bad input found by trying the tool as a new user."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from slimformer.config import MethodConfig, StageConfig, option
from slimformer.errors import DataError


@dataclass
class CopyConfig(StageConfig):
    """A toy stage: copies the model and records a note."""

    uses_data = "none"
    note: str = option("copied", "What to write in metrics.json.")


def copy_stage(source, folder, config, data=None, teacher=None):
    """Only builds: the envelope validated, resolved `source`, opened `folder` and writes both JSON files."""
    from slimformer.artifacts import Session, StageResult

    shutil.copytree(source, folder, dirs_exist_ok=True)
    return StageResult({"note": config.note, "had_data": data is not None}, Session(max_length=32))


@pytest.fixture()
def toy_stage():
    from slimformer.stages import STAGES, Stage, register_stage

    stage = register_stage(Stage("copy", CopyConfig, copy_stage, "Copy a model folder."))
    yield stage
    STAGES.pop("copy")


def test_a_registered_stage_is_a_cli_command_with_its_fields_as_options(toy_stage, tiny_classifier_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from slimformer.commands import register_all

    app = typer.Typer()
    register_all(app)
    runner = CliRunner()
    help_text = runner.invoke(app, ["copy", "--help"]).output
    assert "--note" in help_text and "What to write in metrics.json." in help_text
    assert "--data" not in help_text  # uses_data = "none"
    result = runner.invoke(app, ["copy", str(tiny_classifier_dir), "--output", str(tmp_path / "c"), "--note", "hi"])
    assert result.exit_code == 0, result.output
    session = json.loads((tmp_path / "c" / "session.json").read_text())
    assert session["max_length"] == 32 and session["threads"] is None
    assert json.loads((tmp_path / "c" / "metrics.json").read_text()) == {
        "stage": "copy",
        "note": "hi",
        "had_data": False,
        "session": session,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # written atomically: no temporary folder left


def test_a_registered_stage_runs_in_a_recipe(toy_stage, tiny_classifier_dir, clinc_slice_dir, tmp_path):
    from slimformer.pipeline import parse_recipe, run_recipe

    raw = {"model": str(tiny_classifier_dir), "data": str(clinc_slice_dir), "stages": [{"stage": "copy", "note": "r"}]}
    summary = run_recipe(parse_recipe(raw), tmp_path / "run")
    final = Path(summary["final_model"])
    assert json.loads((final / "metrics.json").read_text())["note"] == "r"
    with pytest.raises(Exception, match="unknown option 'nope'"):
        parse_recipe({**raw, "stages": [{"stage": "copy", "nope": 1}]})


def test_cli_import_stays_lean():
    heavy = "('torch', 'transformers', 'datasets')"
    code = f"import sys, slimformer.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_tiny_single_file_dataset_is_one_line_error(tmp_path):
    from slimformer.data import load_data

    path = tmp_path / "tiny.csv"
    path.write_text("text,label\nhello,a\nbye,b\nhi,a\nciao,b\n")
    with pytest.raises(DataError, match="needs at least 10 rows per label") as caught:
        load_data(str(path))
    assert "\n" not in str(caught.value)


def test_a_single_file_is_split_stratified(tmp_path):
    from slimformer.data import column, load_data

    rows = [f"text {i},{'ab'[i % 2]}" for i in range(40)]
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    splits = load_data(str(path))
    for split in (splits.validation, splits.test):
        assert sorted(set(column(split, "label"))) == [0, 1]  # every label in every split
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 40


def test_an_output_folder_that_cannot_be_created_is_one_line_error(tiny_classifier_dir, capsys):
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["export", str(tiny_classifier_dir), "--output", "/proc/forbidden/x", "--data", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: cannot write the output folder /proc/forbidden/x")


def test_labels_follow_the_model_head_order(clinc_slice):
    from slimformer.data import column

    reordered = list(reversed(clinc_slice.labels))
    aligned = clinc_slice.in_label_order(reordered)
    before = [clinc_slice.labels[i] for i in column(clinc_slice.test, "label")]
    after = [reordered[i] for i in column(aligned.test, "label")]
    assert before == after and aligned.labels == reordered


def test_search_then_report_writes_the_trials_table(
    tiny_classifier_dir, clinc_slice_dir, tmp_path, private_cache_one_thread
):
    from slimformer.pipeline import parse_recipe, run_recipe

    stages = [
        {"stage": "search", "student_layers": 1, "trials": 2, "epochs_range": [1, 1], "batch_size": 16},
        {"stage": "benchmark-all", "latency_samples": 5, "warmup": 1, "isolate": False},
        "report",
    ]
    raw = {"model": str(tiny_classifier_dir), "data": str(clinc_slice_dir), "threads": 1, "stages": stages}
    run_recipe(parse_recipe(raw), tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Hyperparameter search" in report
    assert report.count("| COMPLETE |") + report.count("| PRUNED |") == 2
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_every_stage_prints_its_options_as_a_recipe_block_that_parses_back():
    from slimformer.config import commented_options
    from slimformer.pipeline import build_config, config_class, parse_recipe, stage_kinds

    for kind in stage_kinds():
        block = yaml.safe_load(f"stages:\n  - stage: {kind}\n" + commented_options(config_class(kind), indent="    "))
        stage = block["stages"][0]
        assert stage["stage"] == kind and len(stage) == 1 + len(dataclasses.fields(config_class(kind)))
        if kind in ("distill", "search"):  # need a student choice to validate
            stage["student_layers"] = 2
        recipe = parse_recipe({"stages": [stage]})
        assert isinstance(build_config(recipe.stages[0]), config_class(kind))


def test_no_stage_body_opens_its_folder_or_writes_the_envelope_files() -> None:
    """The envelope (envelope.run_stage) alone opens the atomic folder and writes session.json / metrics.json."""
    import importlib
    import inspect

    from slimformer.stages import STAGES

    modules = {STAGES[name].function.__module__ for name in STAGES if name != "search"}
    modules |= {"slimformer.onnx.ort_quantize", "slimformer.onnx.quantize_select", "slimformer.onnx.qat"}
    modules |= {"slimformer.onnx.torch_dynamic"}
    assert len(modules) >= 9
    for module in sorted(modules):
        source = inspect.getsource(importlib.import_module(module))
        for call in ("atomic_output_dir(", "write_session(", "write_metrics("):
            assert call not in source, f"{module} calls {call}"


def test_a_failing_stage_leaves_nothing_behind(tiny_classifier_dir, tmp_path):
    from slimformer.errors import ModelError
    from slimformer.stages import STAGES, Stage, register_stage, run_stage

    def broken(source, folder, config, data=None, teacher=None):
        (folder / "half.bin").write_bytes(b"x")
        raise ModelError("broken on purpose")

    register_stage(Stage("broken", CopyConfig, broken, "Fails."))
    try:
        with pytest.raises(ModelError, match="on purpose"):
            run_stage("broken", tiny_classifier_dir, tmp_path / "out")
    finally:
        STAGES.pop("broken")
    assert list(tmp_path.iterdir()) == []


@dataclass
class CopyInt8Config(MethodConfig):
    """A toy quantization method: copies the ONNX folder and records a note."""

    method = "copy-int8"
    label: str = option("toy", "What to write in metrics.json.")


def copy_int8(source, folder, config, data=None, teacher=None):
    from slimformer.artifacts import Session, StageResult

    shutil.copytree(source, folder, dirs_exist_ok=True)
    return StageResult({"label": config.method_config().label}, Session(max_length=32))


def test_a_quantization_method_is_one_config_one_function_and_one_registry_line(tmp_path, capsys) -> None:
    """torchao style: the method's config class, its function and `register_method` make it a `--method` of
    `slimformer quantize`, with its options on the command line, dispatched on its config's type."""
    from slimformer.stages import STAGES, register_method
    from tests.test_cli import run_cli

    original = STAGES["quantize"]
    register_method("quantize", CopyInt8Config, copy_int8)
    try:
        onnx_dir = Path(__file__).resolve().parent / "data" / "tiny_onnx"
        args = ["quantize", onnx_dir, "--method", "copy-int8", "--label", "hello", "--output", tmp_path / "q"]
        code, _, err = run_cli([*args, "--data", "none"], capsys)
        assert code == 0, err
        metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
        assert metrics["label"] == "hello" and metrics["stage"] == "quantize"
        assert (tmp_path / "q" / "model.onnx").read_bytes() == (onnx_dir / "model.onnx").read_bytes()
        # the built-in methods are still there, and the toy's option belongs to it alone
        code, _, err = run_cli(
            ["quantize", onnx_dir, "--method", "dynamic", "--label", "x", "-o", tmp_path / "d"], capsys
        )
        assert code == 2 and "--label is for copy-int8 quantization, not dynamic" in err
    finally:
        STAGES["quantize"] = original
    code, _, err = run_cli(["quantize", onnx_dir, "--method", "copy-int8", "--output", tmp_path / "gone"], capsys)
    assert code == 2 and "unknown quantization method 'copy-int8'" in err


def test_reuse_returns_a_finished_folder_and_runs_a_missing_one(toy_stage, tiny_classifier_dir, tmp_path) -> None:
    """`run_stage(reuse=True)` is the cache both `run` and `auto` use: the stage function runs only for a folder
    that is not finished; a killed writer's half folder is cleared first."""
    from slimformer.envelope import run_stage

    calls = []
    stage = dataclasses.replace(toy_stage, function=lambda *args, **kwargs: calls.append(1) or copy_stage(*args))
    output = tmp_path / "copy-abc123"
    (tmp_path / ".tmp-copy-abc123-killed").mkdir()  # what a kill -9 mid-stage leaves
    first = run_stage(stage, tiny_classifier_dir, output, CopyConfig(note="one"), reuse=True)
    mtime = (output / "metrics.json").stat().st_mtime_ns
    again = run_stage(stage, tiny_classifier_dir, output, CopyConfig(note="two"), reuse=True)
    assert calls == [1] and again == first and first["note"] == "one"
    assert (output / "metrics.json").stat().st_mtime_ns == mtime
    assert not (tmp_path / ".tmp-copy-abc123-killed").exists()
    run_stage(stage, tiny_classifier_dir, output, CopyConfig(note="three"))  # without reuse: made again
    assert calls == [1, 1] and json.loads((output / "metrics.json").read_text())["note"] == "three"
