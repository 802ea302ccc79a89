"""Pieces every ONNX stage shares: parity figures, the texts they are measured on, the encoder's shape, and
copying the files that make an ONNX folder self-contained. Inference itself is the Predictor's."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.errors import ModelError
from slimformer.models import ONNX_FILE as ONNX_FILE  # the stages import the file names from here
from slimformer.models import SESSION_FILE as SESSION_FILE
from slimformer.predictor import GRAPH_LEVELS as GRAPH_LEVELS  # the configs validate against it

if TYPE_CHECKING:
    from slimformer.data import DataSplits

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


# ops that hold the embedding tables: quantizing them saves the most space and costs the most accuracy
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")


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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (bare asserts)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
