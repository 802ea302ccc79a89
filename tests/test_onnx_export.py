"""ONNX export and ONNX Runtime optimization on a tiny BERT trained on the CLINC slice."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from slimformer.errors import ModelError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_trained_tiny_classifier(folder: Path, data, epochs: int = 12, seed: int = 0) -> Path:
    """A tiny BERT classifier (hidden 32, 4 heads, 2 layers) with a word-level vocabulary, trained for a few
    seconds on `data` so that its predictions depend on the input (a random head's logits are nearly equal,
    which would make every agreement check trivially true)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from slimformer.data import column

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    texts = column(data.train, "text") + column(data.validation, "text") + column(data.test, "text")
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)  # transformers 5: `vocab`, not vocab_file
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(data.labels),
        id2label=dict(enumerate(data.labels)),
        label2id={label: i for i, label in enumerate(data.labels)},
    )
    model = BertForSequenceClassification(config)
    train_texts, train_labels = column(data.train, "text"), column(data.train, "label")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_texts)).tolist()
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            batch = tokenizer([train_texts[i] for i in rows], padding=True, return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([train_labels[i] for i in rows])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    torch.set_num_threads(threads)
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and a CPU shared with other jobs makes thread sync very slow."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_tiny_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    return build_trained_tiny_classifier(tmp_path_factory.mktemp("trained_tiny"), clinc_slice)


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory: pytest.TempPathFactory, trained_tiny_dir: Path, clinc_slice) -> Path:
    from slimformer.onnx import ExportConfig, export_onnx

    output = tmp_path_factory.mktemp("exported") / "onnx"
    export_onnx(trained_tiny_dir, output, ExportConfig(threads=1), data=clinc_slice)
    return output


@pytest.fixture(scope="session")
def optimized_dir(tmp_path_factory: pytest.TempPathFactory, exported_dir: Path) -> Path:
    from slimformer.onnx import OptimizeConfig, optimize_onnx

    output = tmp_path_factory.mktemp("optimized") / "onnx-opt"
    optimize_onnx(exported_dir, output, OptimizeConfig(threads=1))
    return output


def test_trained_fixture_predicts_from_the_input(trained_tiny_dir: Path, clinc_slice) -> None:
    from slimformer import load
    from slimformer.data import column

    labels, _ = load(trained_tiny_dir).predict(column(clinc_slice.validation, "text"))
    assert len(set(labels)) >= 3  # not one constant answer


def test_export_matches_pytorch_and_is_self_contained(exported_dir: Path, trained_tiny_dir: Path, clinc_slice) -> None:
    import onnx
    import onnxruntime as ort

    from slimformer import load
    from slimformer.data import column
    from slimformer.predictor import OnnxPredictor

    parity = json.loads((exported_dir / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_logit_diff"] <= 1e-4
    assert parity["examples"] == len(clinc_slice.validation) and parity["argmax_agreement"] == 1.0
    metrics = json.loads((exported_dir / "metrics.json").read_text())
    assert metrics["stage"] == "export" and metrics["config"]["opset"] >= 17
    assert metrics["validation"]["accuracy"] == pytest.approx(metrics["validation_pytorch"]["accuracy"])
    assert json.loads((exported_dir / "config.json").read_text())["id2label"]["1"] == clinc_slice.labels[1]
    assert json.loads((exported_dir / "session.json").read_text())["graph_optimization_level"] == "all"

    # dynamic batch and sequence axes, and a plain InferenceSession runs it at two shapes
    graph = onnx.load(str(exported_dir / "model.onnx")).graph
    assert all([d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"] for i in graph.input)
    assert max(o.version for o in onnx.load(str(exported_dir / "model.onnx")).opset_import if o.domain == "") >= 17
    session = ort.InferenceSession(str(exported_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 5), (3, 11)):
        feed = {i.name: np.ones((batch, length), dtype=np.int64) for i in session.get_inputs()}
        assert session.run(None, feed)[0].shape == (batch, len(clinc_slice.labels))

    # one predictor type for both folders, same answers
    texts = column(clinc_slice.validation, "text")
    onnx_predictor, torch_predictor = load(exported_dir), load(trained_tiny_dir)
    assert isinstance(onnx_predictor, OnnxPredictor)
    assert onnx_predictor.predict(texts)[0] == torch_predictor.predict(texts)[0]
    np.testing.assert_allclose(onnx_predictor.predict(texts)[1], torch_predictor.predict(texts)[1], atol=1e-5)


def test_export_without_data_uses_builtin_sentences(trained_tiny_dir: Path, tmp_path: Path) -> None:
    from slimformer.onnx import ExportConfig, export_onnx
    from slimformer.onnx.runtime import BUILTIN_SENTENCES

    metrics = export_onnx(trained_tiny_dir, tmp_path / "out", ExportConfig(threads=1))
    assert metrics["parity"]["texts"] == "built-in sentences"
    assert metrics["parity"]["examples"] == len(BUILTIN_SENTENCES) and "validation" not in metrics


def test_export_refuses_a_base_model(tiny_base_dir: Path, tmp_path: Path) -> None:
    from slimformer.onnx import export_onnx

    with pytest.raises(ModelError, match="base model without a classification head"):
        export_onnx(tiny_base_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_reports_a_broken_checkpoint(trained_tiny_dir: Path, tmp_path: Path) -> None:
    from slimformer.onnx import export_onnx

    broken = Path(shutil.copytree(trained_tiny_dir, tmp_path / "broken"))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot load a classifier"):
        export_onnx(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_fails_when_parity_is_broken(trained_tiny_dir: Path, tmp_path: Path) -> None:
    from slimformer.onnx import ExportConfig, export_onnx

    # an fp32 export differs from PyTorch by ~1e-7: a tolerance below that must refuse it and write nothing
    with pytest.raises(ModelError, match="not faithful"):
        export_onnx(trained_tiny_dir, tmp_path / "out", ExportConfig(parity_tolerance=1e-12))
    assert not (tmp_path / "out").exists()


def test_optimize_fuses_attention_in_every_layer(optimized_dir: Path, exported_dir: Path) -> None:
    import onnxruntime as ort

    from slimformer import load

    metrics = json.loads((optimized_dir / "metrics.json").read_text())
    assert metrics["stage"] == "optimize" and metrics["num_heads"] == 4 and metrics["hidden_size"] == 32
    assert metrics["fusions"]["Attention"] == metrics["num_layers"] == 2
    assert metrics["fusions"]["EmbedLayerNormalization"] == 1
    assert metrics["fusions"]["SkipLayerNormalization"] == 4 and metrics["fusions"]["BiasGelu"] == 2
    assert metrics["attention_fully_fused"] and metrics["warnings"] == []
    assert {n.op_type for n in __import__("onnx").load(str(optimized_dir / "model.onnx")).graph.node} >= {"Attention"}
    ort.InferenceSession(str(optimized_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    # the fused graph computes what the exported one does: compared here, not read from the stage's report
    texts = ["book a flight to paris", "what is my balance", "translate good morning", "set an alarm for 7"]
    fused = load(optimized_dir).predict_logits(texts)
    exported = load(exported_dir).predict_logits(texts)
    assert np.abs(fused - exported).max() < 1e-4
    assert (fused.argmax(axis=-1) == exported.argmax(axis=-1)).all()


def test_optimize_warns_when_attention_is_not_fused(exported_dir: Path, tmp_path: Path) -> None:
    from slimformer.onnx import OptimizeConfig, optimize_onnx

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrong_heads = OptimizeConfig(num_heads=8, threads=1)  # the model has 4
        metrics = optimize_onnx(exported_dir, tmp_path / "out", wrong_heads)
    assert metrics["fusions"]["Attention"] == 0 and not metrics["attention_fully_fused"]
    assert any("attention fused in 0 of 2 layers" in str(w.message) for w in caught)
    assert metrics["warnings"]


def test_optimize_needs_an_onnx_folder(trained_tiny_dir: Path, tmp_path: Path) -> None:
    from slimformer.onnx import optimize_onnx

    with pytest.raises(ModelError, match="run `slimformer export` first"):
        optimize_onnx(trained_tiny_dir, tmp_path / "out")


def test_cli_export_and_optimize(
    trained_tiny_dir: Path, tiny_base_dir: Path, clinc_slice_dir: Path, tmp_path: Path, capsys
) -> None:
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export",
                str(trained_tiny_dir),
                "--output",
                str(tmp_path / "onnx"),
                "--data",
                str(clinc_slice_dir),
                "--parity-examples",
                "12",
                "--threads",
                "1",
            ]
        )
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / "onnx" / "parity.json").read_text())["examples"] == 12
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", str(tmp_path / "onnx"), "--output", str(tmp_path / "opt"), "--level", "1", "--threads", "1"])
    assert exit_info.value.code == 0
    assert json.loads((tmp_path / "opt" / "metrics.json").read_text())["config"]["level"] == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_base_dir), "--output", str(tmp_path / "bad"), "--data", "none"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "classification head" in error and "\n" not in error


def test_repeated_embedding_rows_are_stored_once(
    trained_tiny_dir: Path, optimized_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    """Vocabulary clustering leaves repeated rows; optimize and quantize keep one copy of each (same logits)."""
    import onnx
    from onnx import numpy_helper

    from slimformer.data import column
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.prune.vocab import cluster_unseen_rows

    clustered = tmp_path / "clustered"
    clustered.mkdir()
    summary = cluster_unseen_rows(trained_tiny_dir, column(clinc_slice.train, "text")[:40], clustered, clusters=2)
    export_onnx(clustered, tmp_path / "onnx", ExportConfig(), data=clinc_slice)
    optimized = optimize_onnx(tmp_path / "onnx", tmp_path / "opt", OptimizeConfig(threads=1))
    rows = optimized["embedding_rows"]
    assert rows["rows_before"] == summary["embedding_rows"] and rows["rows_after"] == summary["distinct_embedding_rows"]
    assert optimized["parity_vs_input"]["max_abs_logit_diff"] < 1e-4
    assert optimized["onnx_size_mb"] < optimized["onnx_size_mb_before"]
    graph = onnx.load(str(tmp_path / "opt" / "model.onnx")).graph
    table = next(i for i in graph.initializer if i.name == rows["table"])
    assert numpy_helper.to_array(table).shape[0] == rows["rows_after"]

    quantized = quantize(tmp_path / "opt", tmp_path / "int8", QuantizeConfig(method="dynamic", threads=1), clinc_slice)
    assert quantized["agreement"]["argmax_agreement"] >= 0.9  # the INT8 graph reads the compact table correctly

    # a table without repeated rows is left alone
    assert json.loads((optimized_dir / "metrics.json").read_text())["embedding_rows"] is None


def test_sign_rows_reach_the_int8_graph_at_one_bit(trained_tiny_dir: Path, clinc_slice, tmp_path: Path) -> None:
    """Vocabulary pruning's `sign` rows through export, optimize and INT8 with the 4-bit word table: the two-valued
    rows are stored at one bit a value and the graph still agrees with PyTorch."""
    from slimformer.data import column
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.prune.vocab import sign_unseen_rows

    signed = tmp_path / "signed"
    signed.mkdir()
    summary = sign_unseen_rows(trained_tiny_dir, column(clinc_slice.train, "text")[:40], signed, clusters=2)
    exported = export_onnx(signed, tmp_path / "onnx", ExportConfig(), data=clinc_slice)
    assert exported["parity"]["max_abs_logit_diff"] < 1e-4
    optimize_onnx(tmp_path / "onnx", tmp_path / "opt", OptimizeConfig(threads=1))
    config = QuantizeConfig(method="dynamic", threads=1, word_embeddings_4bit=True)
    quantized = quantize(tmp_path / "opt", tmp_path / "int8", config, clinc_slice)
    assert quantized["word_embeddings_4bit"]["one_bit_rows"] >= summary["sign_rows"] > 0
    assert quantized["agreement"]["argmax_agreement"] >= 0.9


def _ops(path: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_optimize_rewrites_are_exact_and_stay_unfused(optimized_dir: Path, exported_dir: Path, tmp_path: Path) -> None:
    """The first-token tail and the split SkipLayerNormalization change no logit, and ONNX Runtime does not fuse
    the split form back when it loads the graph at level "all"."""
    import onnx
    import onnxruntime as ort

    rewrites = json.loads((optimized_dir / "metrics.json").read_text())["rewrites"]
    # last layer: output projection, 2 SkipLayerNorms, 2 FFN MatMuls, BiasGelu; the split: 2 per layer
    assert rewrites["first_token_tail"] == {"applied": True, "nodes": 6, "reason": "", "tensors_gathered": 2}
    assert rewrites["split_skip_layernorm"]["applied"] and rewrites["split_skip_layernorm"]["nodes"] == 4
    ops = _ops(optimized_dir / "model.onnx")
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 4

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as_loaded.onnx")
    ort.InferenceSession(str(optimized_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" not in _ops(tmp_path / "as_loaded.onnx")

    # the last layer's tail runs on one row: expose the tensor the pooler reads and feed 7 tokens
    model = onnx.load(str(optimized_dir / "model.onnx"))
    pooled = next(n for n in model.graph.node if n.op_type == "Gather" and "pooler" in n.name)
    model.graph.output.append(onnx.helper.make_tensor_value_info(pooled.input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((1, 7), dtype=np.int64) for i in session.get_inputs()}
    assert session.run([pooled.input[0]], feed)[0].shape == (1, 1, 32)


def test_optimize_without_rewrites_gives_the_same_logits(optimized_dir: Path, exported_dir: Path, clinc_slice) -> None:
    from slimformer import load
    from slimformer.data import column
    from slimformer.onnx import OptimizeConfig, optimize_onnx

    plain = exported_dir.parent / "opt-fused"
    config = OptimizeConfig(threads=1, first_token_tail=False, split_skip_layernorm=False, biased_attention=False)
    assert optimize_onnx(exported_dir, plain, config)["rewrites"] == {}
    assert _ops(plain / "model.onnx").count("SkipLayerNormalization") == 4
    texts = column(clinc_slice.test, "text")
    fused, rewritten = load(plain).predict_logits(texts, 16), load(optimized_dir).predict_logits(texts, 16)
    assert np.abs(fused - rewritten).max() < 1e-4
    assert (fused.argmax(-1) == rewritten.argmax(-1)).all()


def test_first_token_tail_needs_a_row_wise_path() -> None:
    """No rewrite where the pooled rows mix positions (a softmax over the sequence) or nothing pools a token."""
    import onnx
    from onnx import TensorProto, helper

    from slimformer.onnx.rewrites import compute_first_token_only, split_skip_layer_norms

    def graph(nodes: list) -> onnx.ModelProto:
        index = helper.make_tensor("zero", TensorProto.INT64, [], [0])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        body = helper.make_graph(nodes, "g", [x], [y], [index])
        return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])

    mixed = graph(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=1),
            helper.make_node("Gather", ["p", "zero"], ["y"], axis=1),
        ]
    )
    report = compute_first_token_only(mixed)
    assert not report.applied and "row-wise" in report.reason
    unpooled = graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])])
    assert "no first-token pooling" in compute_first_token_only(unpooled).reason
    assert not split_skip_layer_norms(unpooled).applied


def test_onnx_stages_record_the_fastest_threads(exported_dir: Path, tmp_path: Path) -> None:
    """Without --threads an ONNX stage times its output at 1..N threads x spinning and keeps the fastest."""
    from slimformer.cpu import cpu_model, default_threads
    from slimformer.onnx import OptimizeConfig, optimize_onnx

    metrics = optimize_onnx(exported_dir, tmp_path / "opt", OptimizeConfig())
    session = json.loads((tmp_path / "opt" / "session.json").read_text())
    sweep = session["thread_sweep"]
    assert sweep["cpu"] == cpu_model() and len(sweep["p50_ms"]) == 2 * default_threads()
    best = min(sweep["p50_ms"], key=lambda row: row["p50_ms"])
    assert (session["threads"], session["intra_op_allow_spinning"]) == (best["threads"], best["spinning"])
    assert metrics["session"]["threads"] == best["threads"] and "thread_sweep" not in metrics["session"]
    fixed = json.loads((exported_dir / "session.json").read_text())  # the fixture gave --threads 1
    assert fixed["threads"] == 1 and "thread_sweep" not in fixed


def test_optimize_at_level_99_saves_no_cpu_specific_layout_and_says_nothing_of_it(
    exported_dir: Path, tmp_path: Path, capfd
) -> None:
    """ONNX Runtime warns on every graph saved at level 99 that its NCHWc layout pass may tie it to this CPU; that
    pass rewrites only convolutions, so the encoder's saved graph holds no NCHWc op and the warning is not shown."""
    import onnx

    from slimformer.onnx import OptimizeConfig, optimize_onnx

    capfd.readouterr()
    optimize_onnx(exported_dir, tmp_path / "opt", OptimizeConfig(threads=1, level=99))
    assert "hardware specific" not in capfd.readouterr().err
    graph = onnx.load(str(tmp_path / "opt" / "model.onnx")).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx", "com.microsoft"}
    assert not any("nchwc" in node.domain.lower() or "Nchwc" in node.op_type for node in graph.node)
