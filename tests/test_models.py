"""Model folders: resolving names, telling base models from classifiers, clear errors."""

from __future__ import annotations

import json

import pytest

from slimformer.errors import ModelError
from slimformer.models import check_classifier_fits, classifier_labels, load_classifier, resolve_model_path


def test_default_resolves_to_packaged_minilm():
    path = resolve_model_path("default")
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["hidden_size"] == 384
    assert (path / "model.safetensors").is_file()


def test_default_is_a_base_model_for_clinc(clinc_slice):
    with pytest.raises(ModelError, match="base model .* fine-tune it first"):
        check_classifier_fits(resolve_model_path("default"), clinc_slice.labels)


def test_classifier_labels_and_fit(tiny_classifier_dir, tiny_base_dir, clinc_slice):
    assert classifier_labels(tiny_classifier_dir) == clinc_slice.labels
    assert classifier_labels(tiny_base_dir) is None
    assert check_classifier_fits(tiny_classifier_dir, list(reversed(clinc_slice.labels))) == clinc_slice.labels
    with pytest.raises(ModelError, match="classifies 6 labels, and 2 of the dataset's 2 are not among them"):
        check_classifier_fits(tiny_classifier_dir, ["a", "b"])


def test_load_classifier_refuses_base_model_without_labels(tiny_base_dir):
    with pytest.raises(ModelError, match="base model"):
        load_classifier(tiny_base_dir)
    model = load_classifier(tiny_base_dir, labels=["x", "y", "z"])
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}


@pytest.mark.parametrize("kind", ["missing", "file", "no_config"])
def test_bad_model_paths(tmp_path, kind):
    target = tmp_path / "model"
    if kind == "file":
        target.write_text("not a folder")
    elif kind == "no_config":
        target.mkdir()
    with pytest.raises(
        ModelError, match={"missing": "not found", "file": "is a file", "no_config": "no config.json"}[kind]
    ):
        resolve_model_path(target)


def test_max_length_is_capped_at_what_the_model_can_take(tiny_classifier_dir, tmp_path) -> None:
    """A truncation bound past the position embeddings (tiny model: 64) would crash the model on long texts;
    every stage truncates at the model's own limit instead."""
    from slimformer.models import fit_max_length, token_limit
    from slimformer.onnx import ExportConfig, export_onnx
    from slimformer.predictor import load

    assert token_limit(tiny_classifier_dir) == 64
    assert (fit_max_length(tiny_classifier_dir, 512), fit_max_length(tiny_classifier_dir, 32)) == (64, 32)
    long_text = " ".join(["balance"] * 300)
    predictor = load(tiny_classifier_dir, threads=1, max_length=512)
    assert predictor.max_length == 64
    labels, _ = predictor.predict([long_text])
    metrics = export_onnx(tiny_classifier_dir, tmp_path / "onnx", ExportConfig(max_length=512))
    assert metrics["config"]["max_length"] == 64
    assert json.loads((tmp_path / "onnx" / "session.json").read_text())["max_length"] == 64
    assert load(tmp_path / "onnx", threads=1).predict([long_text])[0] == labels


def test_a_saved_checkpoint_prints_no_progress_bar_and_leaves_the_bars_as_they_were(
    tiny_classifier_dir, tmp_path, capfd
):
    """Every stage saves through `save_checkpoint`: transformers' "Writing model shards" bar would print a line on
    each save (three in every `auto` trial); a library user's own bars are left as they were."""
    from transformers.utils import logging as hf_logging

    from slimformer.models import load_tokenizer, save_checkpoint

    model, tokenizer = load_classifier(tiny_classifier_dir), load_tokenizer(tiny_classifier_dir)
    capfd.readouterr()
    hf_logging.enable_progress_bar()
    save_checkpoint(model, tokenizer, tmp_path / "saved")
    assert "Writing model shards" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored
    assert load_classifier(tmp_path / "saved").config.id2label == model.config.id2label
    hf_logging.disable_progress_bar()
    save_checkpoint(model, tokenizer, tmp_path / "again")
    assert not hf_logging.is_progress_bar_enabled()  # left off
    hf_logging.enable_progress_bar()
