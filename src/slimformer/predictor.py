"""One predictor type for every artefact: PyTorch checkpoint folders and ONNX Runtime folders.

``load(path)`` picks the backend from the folder's content (``model.onnx`` → ONNX Runtime, otherwise a
PyTorch/transformers checkpoint) and returns a :class:`Predictor` with ``predict(texts) -> (labels, scores)``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.errors import ModelError

ONNX_FILE = "model.onnx"
SESSION_FILE = "session.json"
QUANTIZATION_FILE = "quantization.json"  # a PyTorch folder to be quantized at load time (see slimformer.onnx.quantize)
DEFAULT_MAX_LENGTH = 128


def default_threads() -> int:
    """Threads to use when none are given: every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Predictor(ABC):
    """Text in, labels and scores out; tokenization is part of every call (it is part of the latency)."""

    backend: str = ""
    input_format = "np"  # what `tokenize` returns for `logits_from_inputs`: "np" or "pt"

    def __init__(self, path: Path, threads: int, max_length: int) -> None:
        from slimformer.models import load_tokenizer

        self.path = Path(path)
        self.threads = threads
        self.max_length = max_length
        self.tokenizer = load_tokenizer(self.path)
        self.labels: list[str] = _labels_from_config(self.path)

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """Predicted label and its softmax probability for each text."""
        probs = softmax(self.predict_logits(texts))
        best = probs.argmax(axis=-1)
        return [self.labels[i] for i in best], [float(probs[row, i]) for row, i in enumerate(best)]

    def predict_top_k(self, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        """The k most probable labels with their probabilities, for each text."""
        probs = softmax(self.predict_logits(texts))
        order = np.argsort(-probs, axis=-1)[:, :k]
        return [[(self.labels[i], float(probs[row, i])) for i in idx] for row, idx in enumerate(order)]

    def predict_logits_and_token_counts(self, texts: list[str]) -> tuple[np.ndarray, list[int] | None]:
        """Logits, and each text's token count before truncation when the one tokenization tells it (a single
        text that was not truncated); None when it has to be counted separately."""
        if len(texts) == 1 and (single := self._single_text_tokenizer()) is not None:
            encoding = single.encode(texts[0])
            logits = self.logits_from_inputs(self._inputs_from_encoding(encoding, self.input_format))
            return logits, None if encoding.overflowing else [len(encoding.ids)]
        return self.predict_logits(texts), None

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw logits, shape (len(texts), num_labels)."""
        return self.logits_from_inputs(self.tokenize(texts, self.input_format))

    @abstractmethod
    def logits_from_inputs(self, inputs: Any) -> np.ndarray:
        """Logits of tokenized inputs (arrays or tensors in `input_format`)."""

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with special tokens, before truncation (the tokenizer's own count)."""
        counter = self._untruncated_tokenizer()
        if counter is None:
            encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
            return [len(ids) for ids in encoded["input_ids"]]
        if len(texts) <= 4:  # encode_batch's thread pool costs more than it saves on a few short texts
            return [len(counter.encode(text).ids) for text in texts]
        return [len(encoding.ids) for encoding in counter.encode_batch(list(texts))]

    def tokenize(self, texts: list[str], return_tensors: str) -> Any:
        """Model inputs for `texts`, padded to the longest and truncated to `max_length` tokens."""
        if len(texts) == 1 and (single := self._single_text_tokenizer()) is not None:
            # batch 1 (every latency-bound call): the Rust tokenizer directly, without the transformers
            # wrapper's per-call work (it costs about as much as the encoding itself); same ids
            return self._inputs_from_encoding(single.encode(texts[0]), return_tensors)
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors=return_tensors
        )

    def _inputs_from_encoding(self, encoding: Any, return_tensors: str) -> dict[str, Any]:
        arrays = {
            "input_ids": encoding.ids,
            "token_type_ids": encoding.type_ids,
            "attention_mask": encoding.attention_mask,
        }
        encoded = {name: np.asarray([arrays[name]], dtype=np.int64) for name in self._input_names}
        if return_tensors == "pt":
            import torch

            return {name: torch.from_numpy(array) for name, array in encoded.items()}
        return encoded

    def _untruncated_tokenizer(self) -> Any:
        """A private copy of the fast tokenizer's `tokenizers.Tokenizer` with truncation and padding off (None for
        a slow tokenizer); the transformers wrapper changes those settings on its own copy at every call."""
        if not hasattr(self, "_untruncated"):
            import copy

            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            self._untruncated = copy.deepcopy(backend) if backend is not None else None
            if self._untruncated is not None:
                self._untruncated.no_truncation()
                self._untruncated.no_padding()
        return self._untruncated

    def _single_text_tokenizer(self) -> Any:
        """A private copy of the fast tokenizer's `tokenizers.Tokenizer`, truncating at `max_length` (None when the
        tokenizer is not a fast one or has inputs other than ids, token types and attention mask)."""
        if getattr(self, "_single_length", None) != self.max_length:
            import copy

            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            names = list(getattr(self.tokenizer, "model_input_names", []))
            supported = {"input_ids", "token_type_ids", "attention_mask"}
            single = None
            if backend is not None and names and set(names) <= supported:
                single = copy.deepcopy(backend)
                single.no_padding()
                single.enable_truncation(self.max_length, direction=self.tokenizer.truncation_side)
            self._single, self._single_length, self._input_names = single, self.max_length, names
        return self._single

    def settings(self) -> dict[str, Any]:
        """What a benchmark or model card must record about how this predictor runs."""
        return {"backend": self.backend, "threads": self.threads, "max_length": self.max_length}


class TorchPredictor(Predictor):
    """A transformers sequence-classification checkpoint run by PyTorch in eval mode."""

    backend = "pytorch"
    input_format = "pt"

    def __init__(self, path: Path, threads: int, max_length: int) -> None:
        import torch

        from slimformer.models import load_classifier

        super().__init__(path, threads, max_length)
        torch.set_num_threads(threads)
        self.model = load_classifier(path).eval()
        self.quantization = _saved_quantization(self.path)
        if self.quantization:
            self.model = apply_torch_dynamic_quantization(self.model)

    def logits_from_inputs(self, inputs: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(**inputs).logits.float().numpy()

    def settings(self) -> dict[str, Any]:
        import torch

        extra = {"quantization": self.quantization["method"]} if self.quantization else {}
        return {**super().settings(), "torch_threads": torch.get_num_threads(), **extra}


class OnnxPredictor(Predictor):
    """An ONNX model folder (model.onnx + tokenizer + config.json) run by ONNX Runtime on the CPU."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int, max_length: int, graph_optimization: str = "all") -> None:
        import onnxruntime as ort

        super().__init__(path, threads, max_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if graph_optimization not in levels:
            raise ModelError(f"unknown graph optimization {graph_optimization!r}; use one of {', '.join(levels)}")
        options.graph_optimization_level = levels[graph_optimization]
        self.graph_optimization = graph_optimization
        try:
            self.session = ort.InferenceSession(str(self.path / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"ONNX Runtime cannot load {self.path / ONNX_FILE}: {str(exc).splitlines()[0]}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits_from_inputs(self, inputs: Any) -> np.ndarray:
        feed = {name: inputs[name].astype(np.int64) for name in self.input_names if name in inputs}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(inputs["input_ids"], dtype=np.int64)
        return self.session.run(None, feed)[0]

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "intra_op_num_threads": self.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": self.graph_optimization,
        }


def load(path: str | Path, threads: int | None = None, max_length: int | None = None) -> Predictor:
    """Load an artefact folder as a :class:`Predictor` (ONNX Runtime when it holds model.onnx, else PyTorch).

    Session settings saved by an earlier stage (`session.json`) are used unless overridden here.
    """
    from slimformer.models import fit_max_length, resolve_model_path

    folder = resolve_model_path(path)
    saved = json.loads((folder / SESSION_FILE).read_text()) if (folder / SESSION_FILE).is_file() else {}
    threads = threads or saved.get("threads") or default_threads()
    max_length = fit_max_length(folder, max_length or saved.get("max_length") or DEFAULT_MAX_LENGTH)
    if (folder / ONNX_FILE).is_file():
        return OnnxPredictor(folder, threads, max_length, saved.get("graph_optimization_level", "all"))
    return TorchPredictor(folder, threads, max_length)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _labels_from_config(path: Path) -> list[str]:
    from slimformer.models import classifier_labels

    labels = classifier_labels(path)
    if labels is None:
        raise ModelError(
            f"{path} is a base model without a classification head; "
            "fine-tune it first: slimformer finetune --model ... --data ... --output DIR"
        )
    return labels


def _saved_quantization(folder: Path) -> dict[str, Any] | None:
    """The `quantization.json` marker of a PyTorch folder written by `slimformer quantize --method torch-dynamic`."""
    path = folder / QUANTIZATION_FILE
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    if spec.get("method") != "torch-dynamic":
        raise ModelError(f"{path} asks for quantization {spec.get('method')!r}; only torch-dynamic is applied at load")
    return spec


def apply_torch_dynamic_quantization(model: Any) -> Any:
    """The book's PyTorch path: int8 dynamic quantization of every nn.Linear (weights int8, activations
    quantized per batch at run time)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao, still works
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
