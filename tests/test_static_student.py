"""The static student (depth 0): a Model2Vec table from the teacher, a trained head, exported and scored through
the same Predictor as every ONNX artefact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_distill import _all_texts, build_tiny_bert

pytestmark = pytest.mark.usefixtures("private_cache_one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("teacher"), _all_texts(clinc_slice), clinc_slice.labels, layers=2)


def test_token_table_is_the_teachers_pooled_token_outputs_after_pca(teacher_dir: Path) -> None:
    import torch
    from sklearn.decomposition import PCA

    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.static_student import token_table

    built = token_table(teacher_dir, dims=6, sif_coefficient=0.0, batch=7)
    tokenizer, model = load_tokenizer(teacher_dir), load_classifier(teacher_dir).eval()
    with torch.no_grad():
        rows = [
            model.bert(input_ids=torch.tensor([[tokenizer.cls_token_id, i, tokenizer.sep_token_id]]))
            .last_hidden_state.mean(dim=1)[0]
            .numpy()
            for i in range(len(tokenizer))
        ]
    expected = PCA(n_components=6, svd_solver="full", random_state=0).fit_transform(np.array(rows))
    assert built["table"].shape == (len(tokenizer), 6)
    np.testing.assert_allclose(np.abs(built["table"]), np.abs(expected), atol=1e-4)  # PCA signs may flip

    weighted = token_table(teacher_dir, dims=6, sif_coefficient=1e-3, batch=7)["table"]
    p = (1 / np.arange(2, len(tokenizer) + 2)) / np.sum(1 / np.arange(2, len(tokenizer) + 2))
    np.testing.assert_allclose(weighted, built["table"] * (1e-3 / (1e-3 + p))[:, None], rtol=1e-4, atol=1e-6)


def test_static_student_is_exported_and_scored_through_the_predictor(
    teacher_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    import torch

    from slimformer.evaluation import evaluate_predictor
    from slimformer.models import load_classifier
    from slimformer.predictor import load
    from slimformer.stages import run_stage
    from slimformer.static_student import StaticConfig

    config = StaticConfig(dims=8, epochs=20, learning_rate=3e-2, augment="mask")
    metrics = run_stage("static", teacher_dir, tmp_path / "static", config, clinc_slice)
    assert metrics["stage"] == "static" and metrics["transfer_rows"] > 0
    labels = len(clinc_slice.labels)
    assert metrics["num_parameters"] == student_rows(tmp_path / "static") * 8 + 8 * labels + labels
    history = [e["train_loss"] for e in metrics["history"]]
    assert history[-1] < history[0]  # the head (and the table) learnt
    student = load_classifier(tmp_path / "static").eval()
    assert student.config.model_type == "static-embedding" and student.embeddings.weight.shape[1] == 8

    exported = run_stage("export", tmp_path / "static", tmp_path / "onnx", None, clinc_slice)
    assert exported["parity"]["max_abs_logit_diff"] < 1e-4
    predictor = load(tmp_path / "onnx", threads=1)
    texts = ["what is my balance", "book a flight to paris tomorrow"]
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(tmp_path / "static")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        table, head = student.embeddings.weight, student.classifier
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = head((table[batch["input_ids"]] * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(predictor.predict_logits(texts), by_hand, atol=1e-4)
    scores = evaluate_predictor(predictor, clinc_slice.test, clinc_slice)
    assert scores["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert json.loads((tmp_path / "onnx" / "session.json").read_text())["max_length"] == 64

    int8 = run_stage("quantize", tmp_path / "onnx", tmp_path / "int8", None, clinc_slice)
    assert int8["agreement"]["argmax_agreement"] >= 0.9 and int8["size_ratio"] > 2
    # static INT8 calibrates on the graph's own inputs: no token_type_ids, which its BERT tokenizer makes
    from slimformer.onnx.quantize import QuantizeConfig

    calibrated = QuantizeConfig(method="static", calibration_samples=16)
    static_int8 = run_stage("quantize", tmp_path / "onnx", tmp_path / "int8-static", calibrated, clinc_slice)
    assert static_int8["agreement"]["argmax_agreement"] >= 0.9 and static_int8["size_ratio"] > 1.5


def student_rows(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def test_static_student_refuses_layer_stages(teacher_dir: Path, clinc_slice, tmp_path: Path) -> None:
    from slimformer.errors import ConfigError
    from slimformer.stages import run_stage
    from slimformer.static_student import StaticConfig

    run_stage("static", teacher_dir, tmp_path / "static", StaticConfig(dims=4, epochs=1), clinc_slice)
    with pytest.raises(ConfigError, match="static student"):
        run_stage("optimize", tmp_path / "static", tmp_path / "opt")
