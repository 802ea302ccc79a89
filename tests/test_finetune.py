"""Fine-tuning writes a normal, loadable HF classifier with honest metrics, atomically."""

from __future__ import annotations

import json

import pytest

from slimformer.artifacts import read_metrics
from slimformer.errors import ConfigError
from slimformer.finetune import FinetuneConfig, finetune
from slimformer.predictor import load


@pytest.fixture(scope="module")
def finetuned(tiny_base_dir, clinc_slice, tmp_path_factory):
    output = tmp_path_factory.mktemp("ft") / "model"
    config = FinetuneConfig(epochs=8, learning_rate=3e-3, batch_size=16, warmup_ratio=0.0)
    return output, finetune(tiny_base_dir, output, config, clinc_slice)


def test_writes_a_loadable_checkpoint_with_labels(finetuned, clinc_slice):
    from transformers import AutoModelForSequenceClassification

    output, _ = finetuned
    assert (output / "model.safetensors").is_file()
    assert (output / "tokenizer.json").is_file()
    assert not (output / "trainer").exists()
    config = json.loads((output / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(6)] == clinc_slice.labels
    model = AutoModelForSequenceClassification.from_pretrained(str(output))
    assert model.config.num_labels == 6


def test_metrics_match_a_fresh_evaluation(finetuned, clinc_slice):
    from slimformer.data import column
    from slimformer.metrics import classification_metrics

    output, metrics = finetuned
    assert read_metrics(output)["test"] == metrics["test"]
    labels, _ = load(output, threads=1).predict(column(clinc_slice.test, "text"))
    fresh = classification_metrics(
        column(clinc_slice.test, "label"), [clinc_slice.labels.index(x) for x in labels], clinc_slice.oos_label_id
    )
    assert metrics["test"]["accuracy"] == pytest.approx(fresh["accuracy"])
    assert set(metrics["validation"]) == {"accuracy", "macro_f1", "in_scope_accuracy", "oos_recall"}


def test_training_learns(finetuned):
    _, metrics = finetuned
    history = metrics["history"]
    assert len(history) == 8
    assert history[-1]["validation_loss"] < history[0]["validation_loss"]
    assert metrics["validation"]["accuracy"] > 1 / 6  # a constant prediction scores exactly 1/6 here


def test_bad_config_writes_nothing(tiny_base_dir, clinc_slice, tmp_path):
    with pytest.raises(ConfigError, match="epochs must be > 0"):
        finetune(tiny_base_dir, tmp_path / "out", FinetuneConfig(epochs=0), clinc_slice)
    assert not (tmp_path / "out").exists()


def test_failure_mid_way_leaves_no_artifact(tiny_base_dir, clinc_slice, tmp_path, monkeypatch):
    import transformers

    def explode(self, *args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(transformers.Trainer, "train", explode)
    with pytest.raises(RuntimeError, match="killed"):
        finetune(tiny_base_dir, tmp_path / "out", FinetuneConfig(epochs=1), clinc_slice)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.ci_slow
def test_packaged_minilm_learns_a_clinc_slice(clinc_slice, tmp_path):
    """The real packaged MiniLM-L6, fine-tuned on 144 real CLINC150 queries of 6 intents."""
    metrics = finetune(
        "default", tmp_path / "minilm", FinetuneConfig(epochs=6, learning_rate=2e-4, batch_size=16), clinc_slice
    )
    assert metrics["test"]["accuracy"] >= 0.75
    assert load(tmp_path / "minilm").predict(["wake me up at 7 tomorrow"])[0] == ["alarm"]


def test_training_uses_a_gpu_only_when_allowed(monkeypatch, tmp_path) -> None:
    import torch

    from slimformer.training import base_training_arguments

    monkeypatch.setenv("SLIMFORMER_TRAIN_DEVICE", "cpu")
    assert base_training_arguments(tmp_path)["use_cpu"] is True
    monkeypatch.delenv("SLIMFORMER_TRAIN_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert base_training_arguments(tmp_path)["use_cpu"] is False


def test_bf16_training_learns_and_saves_fp32_weights(tiny_base_dir, clinc_slice, tmp_path) -> None:
    """precision bf16: autocast arithmetic, fp32 master weights; the checkpoint stays an fp32 transformers model."""
    from safetensors import safe_open

    config = FinetuneConfig(epochs=8, learning_rate=3e-3, batch_size=16, warmup_ratio=0.0, precision="bf16")
    metrics = finetune(tiny_base_dir, tmp_path / "bf16", config, clinc_slice)
    assert metrics["training_precision"] == "bf16"
    assert metrics["history"][-1]["validation_loss"] < metrics["history"][0]["validation_loss"]
    assert metrics["validation"]["accuracy"] > 1 / 6
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(name).dtype) for name in weights.keys()} == {"torch.float32"}  # noqa: SIM118


def test_precision_auto_follows_the_cpu(monkeypatch, tmp_path) -> None:
    import slimformer.cpu
    from slimformer.training import resolve_precision, trainer_arguments

    monkeypatch.setenv("SLIMFORMER_TRAIN_DEVICE", "cpu")
    for flags, expected in ((frozenset({"avx512f", "avx512_bf16"}), "bf16"), (frozenset({"avx2"}), "fp32")):
        monkeypatch.setattr(slimformer.cpu, "isa_flags", lambda flags=flags: flags)
        assert resolve_precision("auto") == expected
        assert trainer_arguments(tmp_path, FinetuneConfig(precision="auto"))["bf16"] is (expected == "bf16")
    assert resolve_precision("fp32") == "fp32" and trainer_arguments(tmp_path, FinetuneConfig())["bf16"] is False
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, auto"):
        FinetuneConfig(precision="fp16").validate()


def _texts(splits) -> list[str]:
    from slimformer.data import column

    return column(splits.train, "text") + column(splits.validation, "text") + column(splits.test, "text")


def test_a_head_with_more_labels_than_the_dataset_is_kept(clinc_slice, clinc_slice_dir, tmp_path, capsys) -> None:
    """A classifier fine-tuned on 7 intents, given a sample with 6 of them (issue 25's 151-vs-150 case): it is
    the teacher as it is for `auto`, and `slimformer finetune` trains on with its head, no traceback."""
    from slimformer.auto.run import ensure_teacher
    from slimformer.distill import DistillConfig, distill
    from slimformer.evaluation import evaluate_predictor
    from slimformer.models import classifier_labels
    from tests.conftest import build_tiny_bert
    from tests.test_cli import run_cli

    labels = ["extra_intent", *reversed(clinc_slice.labels)]  # a superset, in another order
    teacher = build_tiny_bert(tmp_path / "teacher", _texts(clinc_slice), labels)
    assert ensure_teacher(str(teacher), clinc_slice, tmp_path / "work", quick=True, seed=0) == teacher
    assert not (tmp_path / "work").exists()  # nothing was fine-tuned
    student = tmp_path / "student"
    distill(teacher, student, DistillConfig(student_layers=1, epochs=1, batch_size=16), clinc_slice)
    assert classifier_labels(student) == labels  # distilled over the teacher's head, extra label included

    code, _, err = run_cli(
        ["finetune", teacher, "--data", clinc_slice_dir, "--epochs", 1, "--output", tmp_path / "ft"], capsys
    )
    assert code == 0, err
    assert classifier_labels(tmp_path / "ft") == labels  # the head was kept, its order too
    metrics = read_metrics(tmp_path / "ft")
    # the validation accuracy it records is what scoring the saved model on the dataset gives
    rescored = evaluate_predictor(load(tmp_path / "ft"), clinc_slice.validation, clinc_slice)
    assert metrics["validation"]["accuracy"] == pytest.approx(rescored["accuracy"], abs=1e-6)


def test_a_classifier_for_other_labels_gets_a_new_head(clinc_slice, clinc_slice_dir, tmp_path, capsys) -> None:
    """Re-fine-tuning a classifier on a different label set replaces its head (transformers would refuse the
    shapes): it ends with the dataset's labels, not a traceback."""
    from slimformer.models import classifier_labels
    from tests.conftest import build_tiny_bert
    from tests.test_cli import run_cli

    other = build_tiny_bert(tmp_path / "other", _texts(clinc_slice), [f"intent_{i}" for i in range(9)])
    code, _, err = run_cli(
        ["finetune", other, "--data", clinc_slice_dir, "--epochs", 1, "--output", tmp_path / "ft"], capsys
    )
    assert code == 0, err
    assert sorted(classifier_labels(tmp_path / "ft")) == sorted(clinc_slice.labels)
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert len(config["id2label"]) == len(clinc_slice.labels)
    assert load(tmp_path / "ft").predict(["what is my balance"])[0][0] in clinc_slice.labels


def test_a_head_lacking_dataset_labels_is_refused_in_one_line(clinc_slice, tmp_path) -> None:
    from slimformer.errors import ModelError
    from slimformer.models import check_classifier_fits
    from tests.conftest import build_tiny_bert

    fewer = build_tiny_bert(tmp_path / "fewer", _texts(clinc_slice), clinc_slice.labels[:-1])
    with pytest.raises(ModelError, match=r"1 of the dataset's 6 are not among them"):
        check_classifier_fits(fewer, clinc_slice.labels)
