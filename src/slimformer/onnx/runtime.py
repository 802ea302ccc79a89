"""Pieces every ONNX stage shares: sessions, batched inference over pre-tokenized texts, parity figures,
and copying the files that make an ONNX folder self-contained."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.artifacts import write_session
from slimformer.errors import ModelError
from slimformer.predictor import GRAPH_LEVELS as GRAPH_LEVELS  # the configs validate against it

if TYPE_CHECKING:
    import onnxruntime as ort
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from slimformer.data import DataSplits

ONNX_FILE = "model.onnx"
SESSION_FILE = "session.json"
# SlimBERT's code, beside a head-pruned checkpoint (see slimformer/slimbert)
CUSTOM_CODE_FILES = ("configuration_slimbert.py", "modeling_slimbert.py")
# files a tokenizer may have saved, copied from folder to folder so every output loads on its own
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "added_tokens.json",
)
# used for parity when no dataset is given: short and long, with and without punctuation, so padding matters
BUILTIN_SENTENCES = (
    "what is my bank balance",
    "book a flight from boston to paris for next friday, please",
    "set an alarm for 7 am",
    "how do you say good morning in french?",
    "will it rain tomorrow",
    "I need to transfer money between my checking and savings accounts before the end of the month",
    "hi",
    "tell me a joke about cats and dogs and the weather in london",
)


@dataclass
class EncodedBatches:
    """Texts tokenized once into padded numpy batches, so several models can be evaluated on the same input."""

    texts: list[str]
    batches: list[dict[str, np.ndarray]]


def encode_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, batch_size: int = 64
) -> EncodedBatches:
    """Tokenize `texts` in padded batches of `batch_size` (int64 arrays keyed by the tokenizer's input names)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batches.append({name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()})
    return EncodedBatches(list(texts), batches)


def make_session(
    model_path: str | Path, threads: int | None = None, graph_optimization_level: str = "all"
) -> ort.InferenceSession:
    """A CPU InferenceSession with the predictor's session options (explicit threads, graph level)."""
    import onnxruntime as ort

    from slimformer.predictor import session_options

    try:
        options = session_options(threads, graph_optimization_level)
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(f"ONNX Runtime cannot load {model_path}: {first_line(exc)}") from exc


def onnx_logits(session: ort.InferenceSession, encoded: EncodedBatches) -> np.ndarray:
    """Logits of an ONNX classifier for every encoded text, shape (texts, labels)."""
    input_names = [i.name for i in session.get_inputs()]
    outputs = []
    for batch in encoded.batches:
        feed = {name: batch[name] for name in input_names if name in batch}
        if "token_type_ids" in input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(batch["input_ids"])
        outputs.append(session.run(None, feed)[0])
    return np.concatenate(outputs).astype(np.float32)


def torch_logits(model: PreTrainedModel, encoded: EncodedBatches) -> np.ndarray:
    """Logits of a PyTorch classifier for every encoded text, shape (texts, labels)."""
    import torch

    model.eval()
    outputs = []
    with torch.inference_mode():
        for batch in encoded.batches:
            outputs.append(model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy())
    return np.concatenate(outputs)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely `candidate` logits follow `reference`: max/mean |difference| and argmax agreement."""
    difference = np.abs(reference - candidate)
    agree = reference.argmax(axis=-1) == candidate.argmax(axis=-1)
    return {
        "examples": len(reference),
        "max_abs_logit_diff": float(difference.max()),
        "mean_abs_logit_diff": float(difference.mean()),
        "argmax_agreement": float(agree.mean()),
        "argmax_disagreements": int((~agree).sum()),
    }


def parity_texts(data: DataSplits | None, max_examples: int | None) -> tuple[list[str], list[int] | None, str]:
    """Texts to compare models on: validation examples of `data` (with their labels) or the built-in ones."""
    from slimformer.data import column

    if data is None:
        return list(BUILTIN_SENTENCES), None, "built-in sentences"
    texts, labels = column(data.validation, "text"), column(data.validation, "label")
    if max_examples is not None:
        texts, labels = texts[:max_examples], labels[:max_examples]
    return texts, labels, "validation split"


def encoder_shape(model_dir: str | Path) -> dict[str, Any]:
    """model_type, layers, attention heads, hidden size and attention width from a folder's config.json (ORT's
    optimizer needs heads and width explicitly: it cannot always infer them, e.g. for hidden 32 / 4 heads)."""
    from slimformer.models import read_config

    config = read_config(model_dir)
    text_config = config.get("text_config") or config

    def first(*keys: str) -> Any:
        return next((text_config[k] for k in keys if text_config.get(k) is not None), None)

    heads, hidden = first("num_attention_heads", "n_heads"), first("hidden_size", "dim", "d_model")
    head_size = text_config.get("attention_head_size")  # SlimBERT (heads were removed) and a few others
    return {
        "model_type": config.get("model_type", "bert"),
        "num_layers": first("num_hidden_layers", "n_layers", "num_layers"),
        "num_heads": heads,
        "hidden_size": hidden,
        # width of the attention's query/key/value projections (ORT's `hidden_size`): hidden_size unless heads
        # were removed
        "attention_size": heads * int(head_size) if heads and head_size else hidden,
    }


def copy_model_files(source: Path, destination: Path) -> None:
    """Copy config.json, the tokenizer files and SlimBERT's code (not the weights) to another folder."""
    for name in ("config.json", *CUSTOM_CODE_FILES, *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)


def write_session_file(
    folder: Path, threads: int | None, max_length: int, graph_optimization_level: str = "all"
) -> dict[str, Any]:
    """`session.json` (see :func:`slimformer.artifacts.write_session`)."""
    return write_session(folder, max_length, threads, graph_optimization_level)


def onnx_folder(path: str | Path) -> Path:
    """The folder, checked to hold model.onnx and config.json (raises ModelError otherwise)."""
    folder = Path(path)
    if not (folder / ONNX_FILE).is_file():
        is_checkpoint = (folder / "config.json").is_file()
        hint = " (it is a PyTorch checkpoint: run `slimformer export` first)" if is_checkpoint else ""
        raise ModelError(f"{folder} holds no {ONNX_FILE}{hint}")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json (with id2label) beside {ONNX_FILE}")
    return folder


def split_metrics(
    logits: np.ndarray, label_ids: list[int], model_labels: list[str], data: DataSplits
) -> dict[str, float]:
    """Classification metrics of `logits` (columns in the model's label order) against dataset label ids."""
    from slimformer.data import label_positions
    from slimformer.metrics import classification_metrics

    predicted = label_positions(model_labels, data.labels)[logits.argmax(axis=-1)]
    return classification_metrics(label_ids, predicted, data.oos_label_id)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (bare asserts)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
