"""Torch-free inference: an ONNX folder loads, predicts and is served without importing torch or transformers.

The ONNX artefact is tests/data/tiny_onnx, built without torch by tests/data/make_tiny_onnx.py; its
reference.json holds the token ids and logits numpy computed for a few texts. These tests also run in the
lean environment (`make test-lean`: onnxruntime, tokenizers, fastapi, ... and no torch); the ones that compare
with transformers or build a PyTorch model are skipped there.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slimformer.predictor import OnnxPredictor, TextEncoder, load

TINY_ONNX = Path(__file__).resolve().parent / "data" / "tiny_onnx"
REFERENCE = json.loads((TINY_ONNX / "reference.json").read_text())
TEXTS = [item["text"] for item in REFERENCE["texts"]]
HEAVY = ("torch", "transformers", "datasets", "sklearn")


def _run_fresh(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints a JSON object as its last line."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_onnx_predictor_matches_the_reference_ids_and_logits() -> None:
    predictor = load(TINY_ONNX)
    assert isinstance(predictor, OnnxPredictor)
    assert predictor.max_length == REFERENCE["max_length"] and predictor.threads == 1  # from session.json
    assert predictor.labels == ["balance", "book_flight", "weather"]  # config.json's id2label
    expected = np.array([item["logits"] for item in REFERENCE["texts"]])
    # one padded batch and one text at a time give the reference numbers
    assert np.allclose(predictor.predict_logits(TEXTS), expected, atol=1e-5)
    assert np.allclose(np.concatenate([predictor.predict_logits([t]) for t in TEXTS]), expected, atol=1e-5)
    assert np.allclose(predictor.predict_logits(TEXTS, batch_size=3), expected, atol=1e-5)
    inputs = predictor.tokenize(TEXTS, "np")
    for row, item in enumerate(REFERENCE["texts"]):
        ids = inputs["input_ids"][row][inputs["attention_mask"][row] == 1]
        assert ids.tolist() == item["input_ids"]
    labels, scores = predictor.predict(TEXTS)
    assert labels == [predictor.labels[i] for i in expected.argmax(axis=-1)]
    probabilities = np.exp(expected) / np.exp(expected).sum(axis=-1, keepdims=True)  # the best label's softmax
    assert np.allclose(scores, probabilities.max(axis=-1), atol=1e-5)
    assert [predictor.predict([text])[1][0] for text in TEXTS] == pytest.approx(scores, abs=1e-5)


def test_truncated_texts_report_their_full_token_count() -> None:
    predictor = load(TINY_ONNX)
    long_text = TEXTS[2]
    logits, counts = predictor.predict_logits_and_token_counts([long_text])
    full = predictor.token_counts([long_text, TEXTS[0]])
    assert counts == [full[0]] and logits.shape == (1, 3)
    assert full[0] > predictor.max_length and full[1] == len(REFERENCE["texts"][0]["input_ids"])
    assert predictor.predict_logits_and_token_counts([TEXTS[0]])[1] == [full[1]]


def test_from_file_uses_an_explicit_graph_with_the_folders_tokenizer(tmp_path: Path) -> None:
    graph = tmp_path / "work" / "candidate.onnx"
    graph.parent.mkdir()
    shutil.copy(TINY_ONNX / "model.onnx", graph)
    predictor = OnnxPredictor.from_file(graph, TINY_ONNX, threads=1, max_length=8)
    assert predictor.onnx_path == graph and predictor.max_length == 8
    assert predictor.tokenize([TEXTS[2]], "np")["input_ids"].shape == (1, 8)
    assert np.allclose(predictor.predict_logits(TEXTS[:2]), [i["logits"] for i in REFERENCE["texts"][:2]], atol=1e-5)
    assert OnnxPredictor.from_file(graph, TINY_ONNX).max_length == REFERENCE["max_length"]


def test_session_options_are_built_in_one_place() -> None:
    import onnxruntime as ort

    from slimformer.errors import ModelError
    from slimformer.predictor import GRAPH_LEVELS, session_options

    options = session_options(3, "basic")
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert set(GRAPH_LEVELS) == {"disable", "basic", "extended", "all"}
    with pytest.raises(ModelError, match="unknown graph optimization 'fast'"):
        session_options(1, "fast")


def test_an_onnx_folder_without_tokenizer_json_is_a_one_line_error(tmp_path: Path) -> None:
    from slimformer.errors import ModelError

    folder = Path(shutil.copytree(TINY_ONNX, tmp_path / "no_tokenizer"))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="has no tokenizer.json") as error:
        load(folder)
    assert "save_pretrained" in str(error.value) and "\n" not in str(error.value)
    result = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "serve", str(folder), "--port", "8124"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "has no tokenizer.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_load_and_predict_import_neither_torch_nor_transformers() -> None:
    seen = _run_fresh(
        f"""
import json, sys
import slimformer
predictor = slimformer.load({str(TINY_ONNX)!r})
labels, scores = predictor.predict({TEXTS!r})
print(json.dumps({{"labels": labels, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    )
    expected = np.array([item["logits"] for item in REFERENCE["texts"]]).argmax(axis=-1)
    assert seen["heavy"] == []
    assert seen["labels"] == [load(TINY_ONNX).labels[i] for i in expected]


def test_the_serve_app_imports_neither_torch_nor_transformers() -> None:
    seen = _run_fresh(
        f"""
import json, sys
from fastapi.testclient import TestClient
import slimformer.cli  # the CLI's start-up imports too
from slimformer.serve import ServeConfig, create_app
with TestClient(create_app({str(TINY_ONNX)!r}, ServeConfig(api_key="k"))) as client:
    response = client.post("/predict", json={{"texts": {TEXTS!r}, "top_k": 2}}, headers={{"authorization": "Bearer k"}})
print(json.dumps({{"status": response.status_code, "body": response.json(),
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    )
    assert seen["heavy"] == [] and seen["status"] == 200
    predictions = seen["body"]["predictions"]
    assert [p["num_tokens"] for p in predictions][:2] == [len(i["input_ids"]) for i in REFERENCE["texts"][:2]]
    assert [p["truncated"] for p in predictions] == [False, False, True, False]
    assert all(len(p["top_k"]) == 2 and p["top_k"][0]["label"] == p["label"] for p in predictions)


def test_slimformer_serve_on_an_onnx_folder_maps_no_torch_library() -> None:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "slimformer.cli", "serve", str(TINY_ONNX), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": TEXTS[0]})
        assert response.status_code == 200
        assert response.json()["predictions"][0]["num_tokens"] == len(REFERENCE["texts"][0]["input_ids"])
        maps = Path(f"/proc/{server.pid}/maps").read_text()  # the shared libraries the server process loaded
        assert "onnxruntime" in maps and "libtorch" not in maps
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0


# --- against transformers (full environment only) ---------------------------------------------------------------


FULL_ENV = all(importlib.util.find_spec(name) for name in ("torch", "transformers", "datasets"))
# marked, not skipped inside: their fixtures build PyTorch models, which must not even start in the lean env
needs_full_env = pytest.mark.skipif(not FULL_ENV, reason="builds a PyTorch model or compares with transformers")


def _assert_same_ids(encoder: TextEncoder, tokenizer, texts: list[str], max_length: int) -> None:
    ours, _ = encoder.encode(texts)
    theirs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    assert sorted(ours) == sorted(theirs.keys())
    for name, array in ours.items():
        assert np.array_equal(array, theirs[name]), name
    for text in texts:  # one at a time (no padding) too
        single = tokenizer([text], padding=True, truncation=True, max_length=max_length, return_tensors="np")
        ours_single = encoder.encode([text])[0]
        assert sorted(ours_single) == sorted(single.keys())
        for name, array in ours_single.items():
            assert array.dtype == np.int64 and np.array_equal(array, single[name]), name
    untruncated = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    assert encoder.token_counts(texts) == untruncated
    assert encoder.encode(texts)[1] == untruncated  # the truncating tokenization counts the cut-off pieces too


TOKENIZER_TEXTS = [
    "what is the weather like in paris",
    "book a flight",
    "",
    "   ",
    "Héllo WÖRLD, 你好! " * 12,
    "set an alarm for 7 am " * 10,
    "transfer $40.50 to my savings account",
]


@needs_full_env
@pytest.mark.parametrize("max_length", [64, 6])
def test_wordpiece_ids_match_the_transformers_tokenizer(tiny_classifier_dir: Path, max_length: int) -> None:
    from slimformer.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_classifier_dir)
    encoder = TextEncoder.from_folder(tiny_classifier_dir, max_length)
    _assert_same_ids(encoder, tokenizer, TOKENIZER_TEXTS, max_length)


@needs_full_env
@pytest.mark.parametrize("max_length", [64, 5])
def test_byte_level_bpe_ids_match_the_transformers_tokenizer(tmp_path: Path, max_length: int) -> None:
    """A RoBERTa/ModernBERT-style tokenizer (byte-level BPE, <s> ... </s>, pad id 1, no token types)."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer, processors

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TOKENIZER_TEXTS * 20, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", 0))
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )
    wrapped.save_pretrained(tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    encoder = TextEncoder.from_folder(tmp_path, max_length)
    assert encoder.pad_id == 1 and encoder.input_names == ("input_ids", "attention_mask")
    _assert_same_ids(encoder, tokenizer, TOKENIZER_TEXTS, max_length)


@needs_full_env
def test_torch_predictor_from_an_in_memory_model(tiny_classifier_dir: Path) -> None:
    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.predictor import TorchPredictor

    model, tokenizer = load_classifier(tiny_classifier_dir), load_tokenizer(tiny_classifier_dir)
    predictor = TorchPredictor.from_model(model, tokenizer, max_length=16)
    from_folder = load(tiny_classifier_dir, threads=1, max_length=16)
    assert predictor.labels == from_folder.labels and predictor.path is None
    texts = TOKENIZER_TEXTS
    assert np.allclose(predictor.predict_logits(texts), from_folder.predict_logits(texts), atol=1e-5)
    assert np.allclose(predictor.predict_logits(texts, batch_size=2), predictor.predict_logits(texts), atol=1e-5)
