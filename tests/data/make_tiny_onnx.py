"""Build tests/data/tiny_onnx: a tiny ONNX text classifier folder made without torch or transformers.

The graph is a masked mean of token embeddings (token types added) followed by a linear layer; the tokenizer
is a BERT-style WordPiece built with `tokenizers`. `reference.json` holds the token ids and logits numpy
computes for a few texts, so the lean tests can check the predictor's numbers without `onnx` installed.

    .venv/bin/python tests/data/make_tiny_onnx.py   # needs onnx, tokenizers, numpy
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent / "tiny_onnx"
LABELS = ["balance", "book_flight", "weather"]
WORDS = [
    "what",
    "is",
    "my",
    "balance",
    "book",
    "a",
    "flight",
    "to",
    "paris",
    "rome",
    "the",
    "weather",
    "like",
    "in",
    "today",
    "please",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN = 8
MAX_LENGTH = 16  # session.json's truncation
REFERENCE_TEXTS = ["what is my balance", "book a flight to Rome", "weather in paris today please " * 4, "zzz"]


def build_tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    chars = sorted({c for w in WORDS for c in w})
    vocab = SPECIAL + chars + [f"##{c}" for c in chars] + [w for w in WORDS if w not in chars]
    tokenizer = Tokenizer(WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tokenizer


def logits(weights: dict[str, np.ndarray], ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the graph computes, in numpy."""
    hidden = weights["embedding"][ids] + weights["type_embedding"][types]
    mask_f = mask.astype(np.float32)[..., None]
    pooled = (hidden * mask_f).sum(axis=1) / np.maximum(mask_f.sum(axis=1), 1.0)
    return pooled @ weights["classifier"] + weights["bias"]


def build_graph(weights: dict[str, np.ndarray]):
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])
    one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    last = numpy_helper.from_array(np.array([-1], dtype=np.int64), "last")
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"]),
        helper.make_node("Gather", ["type_embedding", "token_type_ids"], ["types"]),
        helper.make_node("Add", ["tokens", "types"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask_3d"]),
        helper.make_node("Mul", ["hidden", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_3d", "axes"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "classifier"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["logits"]),
    ]
    initializers = [numpy_helper.from_array(value, name) for name, value in weights.items()] + [one, axes, last]
    graph = helper.make_graph(nodes, "tiny_classifier", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main() -> None:
    import onnx

    tokenizer = build_tokenizer()
    rng = np.random.default_rng(0)
    vocab_size = tokenizer.get_vocab_size()
    weights = {
        "embedding": rng.normal(size=(vocab_size, HIDDEN)).astype(np.float32),
        "type_embedding": rng.normal(size=(2, HIDDEN)).astype(np.float32),
        "classifier": rng.normal(size=(HIDDEN, len(LABELS))).astype(np.float32),
        "bias": rng.normal(size=(len(LABELS),)).astype(np.float32),
    }
    FOLDER.mkdir(parents=True, exist_ok=True)
    model = build_graph(weights)
    onnx.checker.check_model(model)
    onnx.save(model, FOLDER / "model.onnx")
    tokenizer.save(str(FOLDER / "tokenizer.json"))
    special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "model_max_length": 32, "do_lower_case": True, **special}
    (FOLDER / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "mask_token": "[MASK]"}, indent=2))
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "id2label": {str(i): label for i, label in enumerate(LABELS)},
        "label2id": {label: i for i, label in enumerate(LABELS)},
        "max_position_embeddings": 32,
    }
    (FOLDER / "config.json").write_text(json.dumps(config, indent=2))
    (FOLDER / "session.json").write_text(json.dumps({"max_length": MAX_LENGTH, "threads": 1}, indent=2))
    tokenizer.enable_truncation(MAX_LENGTH)
    reference = []
    for text in REFERENCE_TEXTS:
        encoding = tokenizer.encode(text)
        ids, types = np.array([encoding.ids]), np.array([encoding.type_ids])
        row = logits(weights, ids, types, np.ones_like(ids))[0]
        reference.append({"text": text, "input_ids": encoding.ids, "logits": [float(x) for x in row]})
    (FOLDER / "reference.json").write_text(json.dumps({"max_length": MAX_LENGTH, "texts": reference}, indent=2))


if __name__ == "__main__":
    main()
