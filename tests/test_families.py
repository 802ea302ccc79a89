"""Every encoder family through every stage: a tiny random classifier per family (its own kind of tokenizer,
trained here in milliseconds) distilled, pruned (heads + FFN, vocabulary), exported, optimized, quantized."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
ALBERT_SPECIALS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN, HEADS, INTERMEDIATE, TEACHER_LAYERS = 32, 4, 64, 4


@dataclass(frozen=True)
class Recipe:
    """How one family's tiny classifier is built: its config class and tokenizer kind."""

    family: str
    tokenizer: str  # wordpiece | bpe | unigram
    specials: tuple[str, ...]  # pad, unk/bos..., in the family's usual order
    pair_style: str  # bert ([CLS] a [SEP]) | roberta (<s> a </s>)


RECIPES = {
    "bert": Recipe("bert", "wordpiece", tuple(WORDPIECE_SPECIALS), "bert"),
    "distilbert": Recipe("distilbert", "wordpiece", tuple(WORDPIECE_SPECIALS), "bert"),
    "electra": Recipe("electra", "wordpiece", tuple(WORDPIECE_SPECIALS), "bert"),
    "mpnet": Recipe("mpnet", "wordpiece", tuple(ROBERTA_SPECIALS), "roberta"),
    "roberta": Recipe("roberta", "bpe", tuple(ROBERTA_SPECIALS), "roberta"),
    "modernbert": Recipe("modernbert", "bpe", tuple(WORDPIECE_SPECIALS), "bert"),
    "xlm-roberta": Recipe("xlm-roberta", "unigram", tuple(ROBERTA_SPECIALS), "roberta"),
    "deberta-v2": Recipe("deberta-v2", "unigram", tuple(DEBERTA_SPECIALS), "bert"),
    "albert": Recipe("albert", "unigram", tuple(ALBERT_SPECIALS), "bert"),
}


def build_tokenizer(recipe: Recipe, texts: list[str]) -> Any:
    """A fast tokenizer of the family's kind trained on `texts` (WordPiece, byte-level BPE or Unigram)."""
    from slimformer.tokenizer_kinds import train_tokenizer

    return train_tokenizer(recipe.tokenizer, recipe.specials, recipe.pair_style, texts)


def build_config(recipe: Recipe, tokenizer: Any, labels: list[str]) -> Any:
    """A tiny config of the family (hidden 32, 4 heads, 4 layers) numbering the labels in dataset order."""
    from transformers import AutoConfig

    from slimformer.tokenizer_kinds import family_settings, vocabulary_settings

    ids = vocabulary_settings(tokenizer, labels)
    shape = {
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": TEACHER_LAYERS,
        "max_position_embeddings": 130,
    }
    family = recipe.family
    if family == "distilbert":
        shape = {"dim": HIDDEN, "n_heads": HEADS, "hidden_dim": INTERMEDIATE, "n_layers": TEACHER_LAYERS}
        shape["max_position_embeddings"] = 128
    shape.update(family_settings(family, tokenizer, 16))  # ELECTRA-small's embeddings are narrower too
    return AutoConfig.for_model(family, **shape, **ids)


def build_classifier(folder: Path, family: str, texts: list[str], labels: list[str], seed: int = 0) -> Path:
    """Save a tiny random classifier of `family` with its tokenizer to `folder`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    recipe = RECIPES[family]
    tokenizer = build_tokenizer(recipe, texts)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(build_config(recipe, tokenizer, labels))
    with torch.no_grad():  # random heads of std 0.02 give near-constant logits: widen them so parity means something
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


FAMILIES = tuple(RECIPES)
# Attention / EmbedLayerNormalization fusions on the 2-layer pruned student: onnxruntime 1.32's, plus slimformer's
# biased-attention rewrite (MultiHeadAttention) for MPNet and for the one ALBERT layer onnxruntime leaves unfused
ATTENTION_FUSIONS = {"bert": 2, "distilbert": 2, "roberta": 2, "xlm-roberta": 2, "electra": 2, "albert": 2, "mpnet": 2}
EMBEDDING_FUSIONS = {"bert": 1, "distilbert": 1, "electra": 1}
NO_ORT_ATTENTION = {"deberta-v2", "modernbert"}


@pytest.fixture(scope="session")
def slice_data(clinc_slice_dir: Path) -> Any:
    from slimformer.data import load_data

    return load_data(str(clinc_slice_dir))


@pytest.fixture(scope="session")
def teachers(tmp_path_factory: pytest.TempPathFactory, slice_data: Any) -> dict[str, Path]:
    """One tiny random 4-layer classifier per family."""
    root = tmp_path_factory.mktemp("family_teachers")
    texts = list(slice_data.train["text"])
    return {family: build_classifier(root / family, family, texts, slice_data.labels) for family in FAMILIES}


_RUNS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="session")
def stage_runs(tmp_path_factory: pytest.TempPathFactory, teachers: dict[str, Path], slice_data: Any) -> Any:
    """run(family) -> {stage: metrics} of distill -> prune structured -> prune vocab -> export -> optimize ->
    quantize, each family run once per session."""
    from slimformer.distill import DistillConfig, distill
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.prune.stage import PruneConfig, prune

    def run(family: str) -> dict[str, Any]:
        if family in _RUNS:
            return _RUNS[family]
        root = tmp_path_factory.mktemp(f"run_{family}")
        steps = [
            ("distill", distill, DistillConfig(student_layers=2, epochs=1, max_length=32)),
            (
                "structured",
                prune,
                PruneConfig(method="structured", heads_fraction=0.5, ffn_fraction=0.5, epochs=0, max_length=32),
            ),
            ("vocab", prune, PruneConfig(method="vocab", vocab_clusters=8, max_length=32)),
            ("export", export_onnx, ExportConfig(max_length=32)),
            ("optimize", optimize_onnx, OptimizeConfig(max_length=32)),
            ("quantize", quantize, QuantizeConfig(max_length=32, word_embeddings_4bit=True)),
        ]
        source, results = teachers[family], {}
        for name, stage, config in steps:
            results[name] = stage(source, root / name, config, slice_data)
            source = root / name
        results["folders"] = {name: root / name for name, _, _ in steps}
        _RUNS[family] = results
        return results

    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_through_every_stage(family: str, stage_runs: Any) -> None:
    from slimformer.models import load_classifier, read_config

    runs = stage_runs(family)
    folders = runs["folders"]
    student = read_config(folders["distill"])
    assert student.get("num_hidden_layers", student.get("n_layers")) == 2
    if family == "modernbert":  # the kept layers' own attention kinds (teacher: full, sliding, sliding, full)
        assert student["layer_types"] == ["full_attention", "full_attention"]

    structured = runs["structured"]["structured"]
    assert (structured["intermediate_size_before"], structured["intermediate_size_after"]) == (64, 32)
    pruned = read_config(folders["structured"])
    assert (structured["heads_before"], structured["heads_after"], structured["head_size"]) == (4, 2, 8)
    assert pruned["model_type"] in (f"slim-{family}", "slimbert")
    assert pruned["attention_head_size"] == 8
    if family == "mpnet":  # one relative-position bias table for all layers: the same heads go from each
        assert len({tuple(heads) for heads in structured["kept_heads"]}) == 1
    assert structured["parameters_after"] < structured["parameters_before"]
    assert load_classifier(folders["structured"]).num_parameters() == structured["parameters_after"]

    vocabulary = runs["vocab"]["vocabulary"]
    assert vocabulary["unseen_tokens"] == "cluster"
    assert vocabulary["distinct_embedding_rows"] <= vocabulary["used_tokens"] + vocabulary["clusters"]

    # the ONNX graphs compute what the PyTorch model they came from computes, scored here, not by the stages
    from slimformer.predictor import load

    texts = ["book a flight to paris", "what is my balance", "translate hello into french", "wake me at 7"]
    reference = load(folders["vocab"], max_length=32).predict_logits(texts)
    for stage, tolerance in (("export", 1e-4), ("optimize", 1e-3)):
        logits = load(folders[stage], max_length=32).predict_logits(texts)
        assert abs(logits - reference).max() < tolerance, stage
        assert (logits.argmax(axis=-1) == reference.argmax(axis=-1)).all(), stage

    optimized = runs["optimize"]
    assert optimized["optimizer_model_type"] == "bert"
    assert optimized["attention_fused_layers"] == ATTENTION_FUSIONS.get(family, 0)
    assert optimized["fusions"]["EmbedLayerNormalization"] == EMBEDDING_FUSIONS.get(family, 0)
    if family in NO_ORT_ATTENTION:
        assert optimized["attention_fusion"].startswith(f"not available in onnxruntime for {family}")
        assert not any("attention fused in" in w for w in optimized["warnings"])
    else:
        assert optimized["attention_fusion"].startswith(f"fused in {ATTENTION_FUSIONS[family]} of 2 layers")
    # every family's word table stored 4-bit: fused (with or without token types) or a plain lookup
    table = runs["quantize"]["word_embeddings_4bit"]
    assert table is not None and table["bytes_after"] < 0.8 * table["bytes_before"], table  # 16-32 values a row
    int8 = load(folders["quantize"], max_length=32).predict_logits(texts)
    assert int8.shape == reference.shape and np.isfinite(int8).all()


def _logits(model: Any, tokenizer: Any, texts: list[str]) -> Any:
    import torch

    with torch.no_grad():
        return model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_sign_rows_keep_each_familys_logits_on_the_texts_they_were_made_from(
    family: str, teachers: dict[str, Path], slice_data: Any, tmp_path: Path
) -> None:
    """Vocabulary pruning's `sign`: where the family adds a position row to every token, the signed rows' mean
    moves there, so texts spelt with kept tokens only get the same logits; elsewhere the kept rows stay as they are."""
    from slimformer.predictor import load
    from slimformer.prune.vocab import sign_unseen_rows

    texts = list(slice_data.train["text"])[:20]
    (tmp_path / "signed").mkdir()
    summary = sign_unseen_rows(teachers[family], texts, tmp_path / "signed", clusters=4)
    assert summary["sign_rows"] > 0
    before = load(teachers[family], max_length=32).predict_logits(texts)
    after = load(tmp_path / "signed", max_length=32).predict_logits(texts)
    assert abs(after - before).max() < 1e-4


def test_sign_rows_reach_the_int8_graph_at_one_bit_where_a_second_gather_reads_the_table(
    teachers: dict[str, Path], slice_data: Any, tmp_path: Path
) -> None:
    """The recipe's vocabulary stage (sign rows) through export, optimize and INT8 with the 4-bit table: the sign
    rows are stored 1-bit also in DistilBERT's graph, whose second Gather of the word table (for the input's
    shape) now looks its rows up through the row index, and the graph computes what it computed with the table
    in INT8. (BERT's single lookup: tests/test_onnx_export.py.)"""
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.predictor import load
    from slimformer.prune.stage import PruneConfig, prune

    vocab = prune(
        teachers["distilbert"],
        tmp_path / "vocab",
        PruneConfig(method="vocab", vocab_unseen="sign", vocab_clusters=4, max_length=32),
        slice_data,
    )
    export_onnx(tmp_path / "vocab", tmp_path / "onnx", ExportConfig(max_length=32), slice_data)
    optimize_onnx(tmp_path / "onnx", tmp_path / "opt", OptimizeConfig(max_length=32, threads=1))
    for packed in (False, True):
        config = QuantizeConfig(method="dynamic", max_length=32, threads=1, word_embeddings_4bit=packed)
        quantized = quantize(tmp_path / "opt", tmp_path / f"int8-{packed}", config, slice_data)
    sign_rows = vocab["vocabulary"]["sign_rows"]
    assert quantized["word_embeddings_4bit"]["one_bit_rows"] >= sign_rows > 0
    texts = list(slice_data.test["text"])[:16]
    plain = load(tmp_path / "int8-False", max_length=32).predict_logits(texts)
    small = load(tmp_path / "int8-True", max_length=32).predict_logits(texts)
    assert abs(small - plain).max() < 0.1 * abs(plain).max()  # 3-4 % here: the kept rows' 4 bits


@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_units_equals_zeroing_their_output_columns(
    family: str, teachers: dict[str, Path], slice_data: Any, tmp_path: Path
) -> None:
    """Removing heads / FFN neurons computes exactly what the unpruned model computes with those units'
    columns of the output projection set to zero, and the saved checkpoint reloads to the same logits."""
    import copy

    import torch

    from slimformer.families import family_of
    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.structured import as_slim_model, layer_units, prune_units, unit_importance, units_to_keep

    model, tokenizer = load_classifier(teachers[family]), load_tokenizer(teachers[family])
    texts = list(slice_data.validation["text"])[:6]
    kinds = ("ffn", "heads")
    importance = unit_importance(model, "magnitude", kinds=kinds)
    masked = copy.deepcopy(model)
    keep = {
        kind: units_to_keep(family_of(model), kind, len(importance[kind][0]) // 2, importance[kind]) for kind in kinds
    }
    if family == "mpnet":  # the same heads in every layer: the most important summed over the layers
        common = torch.topk(sum(importance["heads"]), 2).indices
        assert all(set(kept.tolist()) == set(common.tolist()) for kept in keep["heads"])
        table = model.mpnet.encoder.relative_attention_bias.weight[:, torch.sort(common).values].clone()
    with torch.no_grad():
        for kind in kinds:
            for unit, score, kept in zip(layer_units(masked, kind), importance[kind], keep[kind], strict=True):
                dropped = torch.ones(len(score), dtype=torch.bool)
                dropped[kept] = False
                columns = dropped.repeat_interleave(unit.width)
                unit.output.weight[:, columns] = 0
    for kind in kinds:
        prune_units(model, kind, 0.5, importance[kind])
    model = as_slim_model(model)
    if family == "mpnet":
        assert torch.equal(model.mpnet.encoder.relative_attention_bias.weight, table)
    expected = _logits(masked, tokenizer, texts)
    assert torch.allclose(_logits(model, tokenizer, texts), expected, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert torch.allclose(_logits(load_classifier(tmp_path), tokenizer, texts), expected, atol=1e-5)


def test_albert_student_repeats_the_shared_layer(teachers: dict[str, Path]) -> None:
    import torch

    from slimformer.models import load_classifier
    from slimformer.students import build_student_from_teacher

    student, _, kept = build_student_from_teacher(teachers["albert"], 2)
    teacher = load_classifier(teachers["albert"])
    assert student.config.num_hidden_layers == 2 and kept == [0, 3]
    for key, tensor in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[key], tensor)


def test_modernbert_student_keeps_each_kept_layers_attention_kind(teachers: dict[str, Path]) -> None:
    from slimformer.students import build_student_from_teacher

    student, _, kept = build_student_from_teacher(teachers["modernbert"], 3)
    assert kept == [0, 2, 3]
    assert student.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]


def test_preflight_refuses_with_one_line_reasons(teachers: dict[str, Path], tmp_path: Path) -> None:
    from slimformer.families import preflight
    from slimformer.prune.stage import PruneConfig

    heads = PruneConfig(method="structured", heads_fraction=0.5, ffn_fraction=0.5)
    for family in FAMILIES:
        assert preflight(teachers[family], "prune", heads) is None
        assert preflight(teachers[family], "distill", None) is None

    split = PruneConfig(method="vocab", vocab_unseen="split")
    assert preflight(teachers["bert"], "prune", split) is None
    assert preflight(teachers["roberta"], "prune", split) == (
        "--vocab-unseen split rebuilds WordPiece tokenizers only; this one is BPE (use --vocab-unseen cluster)"
    )
    assert "this one is Unigram" in preflight(teachers["deberta-v2"], "prune", split)

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    reason = preflight(tmp_path, "export", None)
    assert reason.startswith("model type 'gpt2' is not a supported encoder family (supported: bert, roberta")
    assert "\n" not in reason


def test_mpnet_attention_is_fused_exactly(teachers: dict[str, Path], slice_data: Any, tmp_path: Path) -> None:
    """ONNX Runtime fuses no MPNet attention (its scores get a relative-position bias); the biased-attention
    rewrite makes each layer one MultiHeadAttention node that computes PyTorch's logits, INT8 included."""
    import collections

    import numpy as np
    import onnx
    import torch

    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.predictor import load

    model, tokenizer = load_classifier(teachers["mpnet"]).eval(), load_tokenizer(teachers["mpnet"])
    texts = list(slice_data.test["text"])[:24]  # batches of 8 with padding: the mask is summed into the bias
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    table = model.mpnet.encoder.relative_attention_bias.weight
    with torch.no_grad():
        torch.manual_seed(0)
        table.normal_(0, 2.0)  # a bias that matters: without it the logits move by far more than the tolerance
        expected = model(**inputs).logits.numpy()
        saved = table.clone()
        table.zero_()
        assert np.abs(model(**inputs).logits.numpy() - expected).max() > 1e-2
        table.copy_(saved)
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    export_onnx(teacher, tmp_path / "export", ExportConfig(max_length=32, parity_examples=4), slice_data)
    ops = {}
    for fused in (False, True):
        folder = tmp_path / ("fused" if fused else "unfused")
        metrics = optimize_onnx(tmp_path / "export", folder, OptimizeConfig(max_length=32, biased_attention=fused))
        assert metrics["attention_fused_layers"] == (TEACHER_LAYERS if fused else 0)
        ops[fused] = collections.Counter(node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node)
    assert ops[False]["Softmax"] == TEACHER_LAYERS and ops[False]["MultiHeadAttention"] == 0
    assert ops[True]["Softmax"] == 0 and ops[True]["MultiHeadAttention"] == TEACHER_LAYERS

    fused = load(tmp_path / "fused", threads=1).predict_logits(texts, 8)
    assert np.abs(fused - expected).max() < 1e-4
    quantize(tmp_path / "fused", tmp_path / "int8", QuantizeConfig(method="dynamic", max_length=32), slice_data)
    int8_ops = collections.Counter(node.op_type for node in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node)
    assert int8_ops["MultiHeadAttention"] == TEACHER_LAYERS and int8_ops["MatMulInteger"] >= 4 * TEACHER_LAYERS
    int8 = load(tmp_path / "int8", threads=1).predict_logits(texts, 8)
    unfused_int8 = tmp_path / "unfused-int8"
    quantize(tmp_path / "unfused", unfused_int8, QuantizeConfig(method="dynamic", max_length=32), slice_data)
    reference = load(unfused_int8, threads=1).predict_logits(texts, 8)
    assert np.abs(int8 - reference).max() < 0.05 * np.abs(reference).max()


def test_split_vocabulary_pruning_refuses_non_wordpiece(teachers: dict[str, Path], tmp_path: Path) -> None:
    from slimformer.errors import ModelError
    from slimformer.prune.vocab import prune_vocabulary

    with pytest.raises(ModelError, match="rebuilds WordPiece tokenizers only; this one is BPE"):
        prune_vocabulary(teachers["roberta"], ["book a flight"], tmp_path / "out")


# encoder Linear layers unstructured pruning masks: 6 per layer (query, key, value, output, 2 FFN); ALBERT's
# one shared layer plus its embedding projection; ModernBERT's fused Wqkv, Wo and its gated FFN's Wi, Wo
ENCODER_LINEARS = {"albert": 7, "modernbert": 16}


@pytest.mark.parametrize("family", FAMILIES)
def test_unstructured_pruning_finds_each_familys_encoder_linears(family: str, teachers: dict[str, Path]) -> None:
    from slimformer.families import family_for_model_type
    from slimformer.models import load_classifier
    from slimformer.prune.magnitude import encoder_linears

    linears = encoder_linears(load_classifier(teachers[family]))
    assert len(linears) == ENCODER_LINEARS.get(family, 6 * TEACHER_LAYERS)
    assert all(name.startswith(family_for_model_type(family).encoder + ".") for name in linears)


def test_magnitude_pruning_runs_on_distilbert(teachers: dict[str, Path], slice_data: Any, tmp_path: Path) -> None:
    from slimformer.prune.stage import PruneConfig, prune

    config = PruneConfig(method="magnitude", sparsity=0.5, epochs=1, max_length=32, sparse_values=("float32",))
    metrics = prune(teachers["distilbert"], tmp_path / "out", config, slice_data)
    assert metrics["sparsity"]["encoder"] == pytest.approx(0.5, abs=0.01)
    assert all(name.startswith("distilbert.transformer.layer.") for name in metrics["sparsity"]["per_layer"])


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_family_through_a_quick_recipe_with_benchmark_and_report(
    family: str, teachers: dict[str, Path], clinc_slice_dir: Path, tmp_path: Path, private_cache_one_thread: None
) -> None:
    """`slimformer run --quick` from a non-BERT teacher: every stage, and the benchmark loads each variant
    (head-pruned `slim-<family>` checkpoint included) in a fresh process of its own."""
    import json

    from slimformer.pipeline import parse_recipe, run_recipe

    stages = [
        {"stage": "distill", "student_layers": 2, "epochs": 1, "max_length": 32},
        {"stage": "prune", "method": "structured", "heads_fraction": 0.5, "ffn_fraction": 0.5, "epochs": 0},
        {"stage": "prune", "name": "vocab", "method": "vocab", "vocab_clusters": 8},
        "export",
        "optimize",
        "quantize",
        {"stage": "benchmark-all", "latency_samples": 5, "warmup": 1, "max_samples": 24},
        "report",
    ]
    raw = {"model": str(teachers[family]), "data": str(clinc_slice_dir), "threads": 1, "stages": stages}
    summary = run_recipe(parse_recipe(raw), tmp_path / "run", quick=True)
    pruned = Path(summary["variants"][2]["path"])
    assert json.loads((pruned / "config.json").read_text())["model_type"] == f"slim-{family}"
    rows = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert [row["model"] for row in rows][:3] == ["teacher", "distill", "prune"]
    assert len(rows) == 7 and all(row["p50_ms"] > 0 for row in rows)
    by_name = {row["model"]: row for row in rows}
    assert by_name["export"]["accuracy"] == pytest.approx(by_name["vocab"]["accuracy"], abs=1 / 24)  # parity
    assert (tmp_path / "run" / "model" / "model.onnx").is_file()
