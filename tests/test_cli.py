"""The command line: results files, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimformer.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_benchmark_writes_json_and_plot(tiny_classifier_dir, clinc_slice_dir, tmp_path, capsys):
    code, out, _ = run_cli(
        [
            "benchmark",
            tiny_classifier_dir,
            "--data",
            clinc_slice_dir,
            "--threads",
            1,
            "--latency-samples",
            10,
            "--warmup",
            1,
            "--no-isolate",
            "--output",
            tmp_path / "r.json",
            "--plot",
            tmp_path / "p.png",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["results"][0]["latency_ms"]["n"] == 10
    assert report["data"]["rows"] == 48
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "tiny_classifier" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["benchmark", "/no/such/model"], "model folder not found"),
        (["benchmark", "{base}", "--data", "{data}"], "base model"),
        (["benchmark", "{model}", "--data", "/no/such/data"], "dataset '/no/such/data' not found"),
        (["benchmark", "{model}", "--data", "{data}", "--threads", "0"], "threads must be >= 1"),
        (["benchmark", "{model}", "--data", "clinc150:huge"], "unknown clinc150 config"),
        (["benchmark", "{model}", "--threads", "many"], "Invalid value for '--threads'"),
        (["finetune", "{base}", "--output", "{tmp}/o", "--data", "{data}", "--epochs", "-1"], "epochs must be > 0"),
        (["finetune", "/nope", "--output", "{tmp}/o", "--data", "{data}"], "model folder not found"),
        (["distill", "{model}", "--output", "{tmp}/o", "--data", "{data}"], "exactly one of --student"),
        (["quantize", "{model}", "--output", "{tmp}/o", "--data", "{data}"], "export` and `slimformer optimize"),
        (["export", "{model}", "--output", "/proc/nope/o", "--data", "none"], "cannot write the output folder"),
        (["distill", "{onnx}", "--student-layers", "1", "--output", "{tmp}/o", "--data", "{data}"], "an ONNX model"),
        (["finetune", "{onnx}", "--output", "{tmp}/o", "--data", "{data}"], "needs a PyTorch checkpoint"),
        (["auto", "--model", "{onnx}", "--min-speedup", "5", "--output", "{tmp}/o", "--data", "{data}"], "an ONNX"),
        (
            ["auto", "--model", "{model}", "--min-speedup", "5", "--output", "{tmp}/o", "--data", "/no/data"],
            "not found",
        ),
        (
            ["auto", "--model", "{model}", "--min-speedup", "5", "--output", "{tmp}/o", "--timing-turn-s", "-1"],
            "timing turn seconds must be >= 0",
        ),
        (["nosuchcommand"], "No such command"),
        (["auto", "--min-speedup", "2", "--layers-choices", "1", "2"], "repeat it, e.g. --layers-choices 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args, message, tiny_classifier_dir, tiny_base_dir, clinc_slice_dir, tmp_path, capsys
):
    import shutil

    # an ONNX model folder (the deployable kind: config, tokenizer, model.onnx, no PyTorch weights)
    onnx = Path(shutil.copytree(tiny_classifier_dir, tmp_path / "onnx", ignore=shutil.ignore_patterns("*.safetensors")))
    (onnx / "model.onnx").write_bytes(b"onnx")
    places = {"model": tiny_classifier_dir, "base": tiny_base_dir, "data": clinc_slice_dir, "tmp": tmp_path}
    filled = [a.format(**places, onnx=onnx) for a in args]
    code, _, err = run_cli(filled, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert not (tmp_path / "o").exists()


def test_help_lists_every_registered_stage(capsys):
    from slimformer.stages import STAGES

    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    missing = [name for name in [*STAGES, "benchmark", "serve", "run", "auto"] if f" {name} " not in out]
    assert missing == []


@pytest.mark.parametrize(
    ("command", "config_path"),
    [
        ("benchmark", "slimformer.benchmark:BenchmarkConfig"),
        ("tune-threads", "slimformer.threads:ThreadTuneConfig"),
        ("serve", "slimformer.serve.config:ServeConfig"),
        ("auto", "slimformer.auto.config:AutoConfig"),
        ("distill", "slimformer.distill:DistillConfig"),
    ],
)
def test_every_config_field_is_an_option_with_its_default_and_help(command: str, config_path: str) -> None:
    """A command's options are generated from its config: each field (but a secret) is one option, with the
    field's default and help text, so the two cannot drift apart."""
    import dataclasses
    import importlib

    import typer

    from slimformer.cli import build_app

    module, name = config_path.split(":")
    config_class = getattr(importlib.import_module(module), name)
    click_command = typer.main.get_command(build_app()).commands[command]
    options = {param.name: param for param in click_command.params}
    for field in dataclasses.fields(config_class):
        if field.metadata.get("cli") is False:
            assert field.name not in options  # the API key never travels on a command line
            continue
        option = options[field.name]

        def as_tuple(value):
            return tuple(value) if isinstance(value, (list, tuple)) else value

        assert as_tuple(option.default) == as_tuple(field.default), field.name
        assert option.help == field.metadata["help"], field.name
