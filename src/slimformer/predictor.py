"""One predictor type for every artefact: PyTorch checkpoint folders and ONNX Runtime folders.

``load(path)`` picks the backend from the folder's content (``model.onnx`` → ONNX Runtime, otherwise a
PyTorch/transformers checkpoint) and returns a :class:`Predictor` with ``predict(texts) -> (labels, scores)``.

The ONNX path imports neither torch nor transformers: it tokenizes with the `tokenizers` library from the
folder's ``tokenizer.json`` and reads labels and limits from ``config.json`` / ``session.json`` as plain JSON.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.cpu import default_threads
from slimformer.encoder import TOKENIZER_FILE, TextEncoder, read_json
from slimformer.errors import ModelError
from slimformer.models import DEFAULT_MAX_LENGTH, ONNX_FILE, SESSION_FILE

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "GRAPH_LEVELS",
    "ONNX_FILE",
    "SESSION_FILE",
    "SPINNING_KEY",
    "OnnxPredictor",
    "Predictor",
    "TextEncoder",
    "TorchPredictor",
    "apply_torch_dynamic_quantization",
    "check_folder",
    "default_threads",
    "load",
    "session_options",
    "softmax",
]

QUANTIZATION_FILE = "quantization.json"  # a PyTorch folder to be quantized at load time (see slimformer.onnx.quantize)
# ONNX Runtime graph optimization levels by the name session.json and the CLI use (GraphOptimizationLevel members)
GRAPH_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
SPINNING_KEY = "intra_op_allow_spinning"  # session.json: true / false / null (ONNX Runtime's default: spin)
ORT_SPINNING_ENTRY = "session.intra_op.allow_spinning"


def session_options(
    threads: int | None = None, graph_optimization_level: str = "all", spinning: bool | None = None
) -> ort.SessionOptions:
    """CPU SessionOptions: `threads` intra-op threads (default: every core), one inter-op thread, sequential
    execution, the named graph optimization level (one of GRAPH_LEVELS), and whether idle intra-op threads
    spin waiting for work (None: ONNX Runtime's default, which spins)."""
    import onnxruntime as ort

    if graph_optimization_level not in GRAPH_LEVELS:
        known = ", ".join(GRAPH_LEVELS)
        raise ModelError(f"unknown graph optimization {graph_optimization_level!r}; use one of {known}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[graph_optimization_level])
    if spinning is not None:
        options.add_session_config_entry(ORT_SPINNING_ENTRY, "1" if spinning else "0")
    return options


def return_freed_memory() -> bool:
    """Hand the heap memory that is free but still held back to the operating system (glibc's `malloc_trim`).

    A session's load frees more than it keeps: the graph's protobuf and, where a packed word table is unpacked by
    constant folding, every intermediate float table. glibc keeps many of those pages, so the process stays larger
    than what it uses (`make demo`'s sign-row model: 30 MiB more, BENCHMARKS.md). True when memory was returned;
    False where the C library has no `malloc_trim` (musl, macOS, Windows) or nothing was free."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process already has
    except (OSError, AttributeError, TypeError):  # no malloc_trim, or no process-wide handle (Windows)
        return False
    return bool(trim(0))


def saved_session(folder: str | Path) -> dict[str, Any]:
    """A folder's `session.json` ({} when it has none): how the artefact runs (see artifacts.write_session)."""
    return read_json(Path(folder) / SESSION_FILE)


class Predictor(ABC):
    """Text in, labels and scores out; tokenization is part of every call (it is part of the latency)."""

    backend: str = ""
    input_format = "np"  # what `tokenize` returns for `logits_from_inputs`: "np" or "pt"

    def __init__(
        self, labels: list[str], max_length: int, threads: int, encoder: TextEncoder | None, path: Path | None
    ) -> None:
        self.labels = labels
        self.threads = threads
        self.encoder = encoder
        self.path = Path(path) if path is not None else None
        self._max_length = max_length

    @property
    def max_length(self) -> int:
        """Tokens kept per text; setting it re-truncates the encoder as well."""
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self._max_length = value
        if self.encoder is not None:
            self.encoder.truncate_at(value)

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """Predicted label and its softmax probability for each text."""
        labels, probabilities = [], []
        # row by row, with as few numpy calls as possible: right after the model ran, numpy's code is out of the
        # CPU caches and each call costs several µs (a full softmax there: 28 µs of a 0.42 ms batch-1 call on AMD
        # EPYC, this: 19-23 µs; BENCHMARKS.md, "Batch-1 parts of a predictor call"). A batch of 32 pays ~0.1 ms
        # of ~10 ms.
        for row in self.predict_logits(texts):
            best = int(row.argmax())
            labels.append(self.labels[best])
            probabilities.append(1.0 / float(np.exp(row - row[best]).sum()))  # its softmax: exp(0) / sum of exps
        return labels, probabilities

    def predict_top_k(self, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        """The k most probable labels with their probabilities, for each text."""
        probs = softmax(self.predict_logits(texts))
        order = np.argsort(-probs, axis=-1)[:, :k]
        return [[(self.labels[i], float(probs[row, i])) for i in idx] for row, idx in enumerate(order)]

    def predict_logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Raw logits, shape (len(texts), num_labels); model calls of at most `batch_size` texts when given."""
        texts = list(texts)
        if batch_size is None or len(texts) <= batch_size:
            return self.logits_from_inputs(self.tokenize(texts, self.input_format))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = [self.predict_logits(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(chunks)

    def predict_logits_and_token_counts(self, texts: list[str]) -> tuple[np.ndarray, list[int] | None]:
        """Logits, and each text's token count before truncation, from one tokenization; None for a predictor
        without a `TextEncoder` (a slow transformers tokenizer: count with `token_counts`)."""
        if self.encoder is None:
            return self.predict_logits(texts), None
        inputs, counts = self.encoder.encode(texts)
        return self.logits_from_inputs(self._as_format(inputs, self.input_format)), counts

    @abstractmethod
    def logits_from_inputs(self, inputs: Any) -> np.ndarray:
        """Logits of tokenized inputs (arrays or tensors in `input_format`)."""

    def tokenize(self, texts: list[str], return_tensors: str) -> Any:
        """Model inputs for `texts`, padded to the longest and truncated to `max_length` tokens."""
        if self.encoder is None:
            raise ModelError("this predictor has no tokenizer")
        return self._as_format(self.encoder.encode(texts)[0], return_tensors)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with special tokens, before truncation (the tokenizer's own count)."""
        if self.encoder is None:
            raise ModelError("this predictor has no tokenizer")
        return self.encoder.token_counts(texts)

    @staticmethod
    def _as_format(arrays: dict[str, np.ndarray], return_tensors: str) -> Any:
        if return_tensors == "pt":
            import torch

            return {name: torch.from_numpy(array) for name, array in arrays.items()}
        return arrays

    def settings(self) -> dict[str, Any]:
        """What a benchmark or model card must record about how this predictor runs."""
        return {"backend": self.backend, "threads": self.threads, "max_length": self.max_length}


class TorchPredictor(Predictor):
    """A transformers sequence-classification model run by PyTorch in eval mode."""

    backend = "pytorch"
    input_format = "pt"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_length: int,
        threads: int | None = None,
        path: Path | None = None,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        id2label = getattr(model.config, "id2label", None) or {}
        labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
        encoder = TextEncoder.from_transformers(tokenizer, max_length)
        super().__init__(labels, max_length, threads or torch.get_num_threads(), encoder, path)
        self.model = model.eval()
        self.tokenizer = tokenizer  # the transformers tokenizer (its Rust backend does the batch-1 work)
        self.quantization = quantization

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, max_length: int, threads: int | None = None) -> TorchPredictor:
        """A predictor over an in-memory model and tokenizer (labels from `model.config.id2label`); torch's
        thread count is left alone unless `threads` is given."""
        return cls(model, tokenizer, max_length, threads)

    @classmethod
    def from_folder(cls, path: Path, threads: int, max_length: int) -> TorchPredictor:
        """A checkpoint folder (quantized at load time when it holds quantization.json)."""
        from slimformer.models import load_classifier, load_tokenizer

        _labels_from_config(path)  # a base model is a one-line error before its weights load
        tokenizer = load_tokenizer(path)
        model = load_classifier(path).eval()
        quantization = _saved_quantization(path)
        if quantization:
            model = apply_torch_dynamic_quantization(model)
        return cls(model, tokenizer, max_length, threads, path, quantization)

    def tokenize(self, texts: list[str], return_tensors: str) -> Any:
        if self.encoder is None:  # a slow (Python) tokenizer: the transformers call
            return self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors=return_tensors
            )
        return super().tokenize(texts, return_tensors)

    def token_counts(self, texts: list[str]) -> list[int]:
        if self.encoder is None:
            encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
            return [len(ids) for ids in encoded["input_ids"]]
        return super().token_counts(texts)

    def logits_from_inputs(self, inputs: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(**inputs).logits.float().numpy()

    def settings(self) -> dict[str, Any]:
        import torch

        extra = {"quantization": self.quantization["method"]} if self.quantization else {}
        return {**super().settings(), "torch_threads": torch.get_num_threads(), **extra}


class OnnxPredictor(Predictor):
    """An ONNX classifier (model.onnx + tokenizer.json + config.json) run by ONNX Runtime on the CPU, without
    torch or transformers."""

    backend = "onnxruntime"

    def __init__(
        self,
        folder: Path,
        threads: int,
        max_length: int,
        graph_optimization: str = "all",
        onnx_path: Path | None = None,
        spinning: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        # an unknown level fails before the tokenizer loads
        options = session_options(threads, graph_optimization, spinning)
        super().__init__(
            _labels_from_config(folder), max_length, threads, TextEncoder.from_folder(folder, max_length), folder
        )
        self.tokenizer = self.encoder.tokenizer  # the `tokenizers.Tokenizer` (truncating at max_length, no padding)
        self.graph_optimization = graph_optimization
        self.spinning = spinning
        self.onnx_path = Path(onnx_path) if onnx_path is not None else folder / ONNX_FILE
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise ModelError(f"ONNX Runtime cannot load {self.onnx_path}: {str(exc).splitlines()[0]}") from exc
        return_freed_memory()
        self.input_names = [i.name for i in self.session.get_inputs()]

    @classmethod
    def from_file(
        cls,
        onnx_path: str | Path,
        folder: str | Path,
        threads: int | None = None,
        max_length: int | None = None,
        graph_optimization_level: str | None = None,
        spinning: bool | None = None,
    ) -> OnnxPredictor:
        """A predictor over an explicit .onnx graph, with the tokenizer and labels of `folder` (e.g. a quantizer's
        candidate graph in a work dir). What is not given comes from the folder's session.json: threads and
        spinning (as `slimformer tune-threads` recorded them; else every core, ONNX Runtime's spinning), graph
        level (else "all") and `max_length` (else 128, capped at what the model can take)."""
        from slimformer.models import resolve_max_length

        folder = Path(folder)
        saved = saved_session(folder)
        return cls(
            folder,
            threads or saved.get("threads") or default_threads(),
            resolve_max_length(folder, max_length),
            graph_optimization_level or saved.get("graph_optimization_level") or "all",
            Path(onnx_path),
            spinning if spinning is not None else saved.get(SPINNING_KEY),
        )

    def logits_from_inputs(self, inputs: Any) -> np.ndarray:
        feed = {name: np.asarray(inputs[name], dtype=np.int64) for name in self.input_names if name in inputs}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return self.session.run(None, feed)[0]

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "intra_op_num_threads": self.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": self.graph_optimization,
            SPINNING_KEY: self.spinning,
        }


def load(
    path: str | Path, threads: int | None = None, max_length: int | None = None, spinning: bool | None = None
) -> Predictor:
    """Load an artefact folder as a :class:`Predictor` (ONNX Runtime when it holds model.onnx, else PyTorch).

    Session settings saved by an earlier stage or by `slimformer tune-threads` (`session.json`: threads,
    spinning, graph level, truncation length) are used unless given here; an explicit value wins.
    """
    from slimformer.models import resolve_max_length, resolve_model_path

    folder = resolve_model_path(path)
    if (folder / ONNX_FILE).is_file():
        return OnnxPredictor.from_file(folder / ONNX_FILE, folder, threads, max_length, spinning=spinning)
    threads = threads or saved_session(folder).get("threads") or default_threads()
    return TorchPredictor.from_folder(folder, threads, resolve_max_length(folder, max_length))


def check_folder(path: str | Path) -> Path:
    """The resolved folder, after the cheap checks `load` would fail on (a one-line ModelError): a classifier
    config, and for an ONNX folder its tokenizer.json. Reads JSON only; loads no model."""
    from slimformer.models import resolve_model_path

    folder = resolve_model_path(path)
    _labels_from_config(folder)
    if (folder / ONNX_FILE).is_file() and not (folder / TOKENIZER_FILE).is_file():
        TextEncoder.from_folder(folder, DEFAULT_MAX_LENGTH)  # raises the error that says how to fix it
    return folder


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
