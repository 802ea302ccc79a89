"""The training stages run unchanged under `torchrun --nproc_per_node 2` (DDP through the Trainer; gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_distill_under_torchrun_trains_on_two_processes(tiny_classifier_dir: Path, clinc_slice_dir: Path, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    output = tmp_path / "student"
    env = {**os.environ, "SLIMFORMER_NO_PROGRESS": "1", "SLIMFORMER_CACHE_DIR": str(tmp_path / "cache")}
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "slimformer.cli", "distill", str(tiny_classifier_dir)]
    command += ["--output", str(output), "--student-layers", "1", "--data", str(clinc_slice_dir), "--epochs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["training_processes"] == 2
    assert done.stdout.count('"output"') == 1  # rank 0 alone reports (and writes the folder)
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".tmp-")]
    # the DDP-trained student is an ordinary checkpoint
    from slimformer.predictor import load

    teacher_labels = json.loads((tiny_classifier_dir / "config.json").read_text())["id2label"]
    assert load(output).labels == [teacher_labels[str(i)] for i in range(len(teacher_labels))]
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
