"""One model's batch-1 timer, driven over stdin/stdout by run.py so that several models' rounds interleave.

Runs in either virtualenv: the "onnx", "optimum", "torch", "torch-dynamic", "openvino" and "ctranslate2" kinds need
only their runtime and tokenizers / transformers (`.venv-peers` has them, and no slimformer); "slimformer" imports
slimformer (`.venv`).

    python timer.py --kind onnx --model FOLDER [--file model.onnx] --queries queries.json --threads 2

Prints one JSON line when loaded ({"ready": ..., "info": {...}}), then answers each command line on stdin:
``warmup N`` (N untimed calls, answers ``{"ok": true}``), ``time [JSON_TEXTS]`` (one timed pass over the queries,
or over the JSON list of texts on the same line; answers ``{"ms": [...]}`` once the process has stopped
spinning), ``quit``. Every call is the logits of ``[text]``, tokenization included.

Its session options, timing loop and idle wait repeat slimformer's (`slimformer.predictor.session_options`,
`slimformer.timing`) instead of importing them: the peers' kinds run in `.venv-peers`, which has no slimformer.

Kinds:
  onnx           tokenizers' Rust tokenizer (tokenizer.json) + an ORT session: the plain loop, the same for every
                 ONNX model, with slimformer's session options (N intra-op threads, 1 inter-op, sequential, ALL)
  optimum        Optimum's own runtime: ORTModelForSequenceClassification + AutoTokenizer, return_tensors="pt"
  slimformer     slimformer.predictor.load(FOLDER).predict_logits([text])
  torch          transformers AutoModelForSequenceClassification in eval / inference_mode (fp32)
  torch-dynamic  the book's path: torch.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
  openvino       tokenizers' Rust tokenizer + an OpenVINO CPU compiled model (LATENCY hint, N inference threads,
                 1 stream)
  ctranslate2    tokenizers' Rust tokenizer + a CTranslate2 int8 Encoder (N intra threads, 1 inter) + the
                 classifier head on its pooler output in numpy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_LENGTH = 128  # slimformer's default truncation, the same for every kind


def ort_session_options(threads: int) -> Any:
    """`slimformer.predictor.session_options(threads)`, repeated (.venv-peers has no slimformer)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def rust_tokenizer(folder: Path) -> Any:
    """tokenizers' tokenizer of `folder`, unpadded, truncated at MAX_LENGTH: the plain loops' tokenization."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    return tokenizer


def graph_inputs(tokenizer: Any, text: str, names: list[str]) -> dict[str, Any]:
    """The batch-1 int64 arrays of `text` that a graph takes (`names`), straight from the encoding."""
    import numpy as np

    encoding = tokenizer.encode(text)
    arrays = {
        "input_ids": encoding.ids,
        "attention_mask": encoding.attention_mask,
        "token_type_ids": encoding.type_ids,
    }
    return {name: np.array([arrays[name]], dtype=np.int64) for name in names}


def load_onnx(folder: Path, file: str, threads: int) -> Callable[[str], Any]:
    import onnxruntime as ort

    tokenizer = rust_tokenizer(folder)
    session = ort.InferenceSession(str(folder / file), ort_session_options(threads), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def logits(text: str) -> Any:
        return session.run(None, graph_inputs(tokenizer, text, names))[0]

    return logits


def load_optimum(folder: Path, file: str, threads: int) -> Callable[[str], Any]:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = ORTModelForSequenceClassification.from_pretrained(
        folder, file_name=file, session_options=ort_session_options(threads), provider="CPUExecutionProvider"
    )

    def logits(text: str) -> Any:
        inputs = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return model(**inputs).logits.numpy()

    return logits


def load_openvino(folder: Path, file: str, threads: int) -> Callable[[str], Any]:
    import openvino as ov

    tokenizer = rust_tokenizer(folder)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    compiled = ov.Core().compile_model(folder / file, "CPU", config)
    request = compiled.create_infer_request()
    names = [port.get_any_name() for port in compiled.inputs]

    def logits(text: str) -> Any:
        return request.infer(graph_inputs(tokenizer, text, names))[0]

    return logits


def load_ctranslate2(folder: Path, file: str, threads: int) -> Callable[[str], Any]:
    import ctranslate2
    import numpy as np
    from safetensors.numpy import load_file

    tokenizer = rust_tokenizer(folder)
    encoder = ctranslate2.Encoder(
        str(folder), device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1
    )
    head = load_file(folder / "head.safetensors")

    def logits(text: str) -> Any:
        encoding = tokenizer.encode(text)
        output = encoder.forward_batch([encoding.ids], token_type_ids=[encoding.type_ids])
        return np.asarray(output.pooler_output) @ head["weight"] + head["bias"]

    return logits


def load_slimformer(folder: Path, file: str, threads: int) -> Callable[[str], Any]:
    from slimformer.predictor import load

    predictor = load(folder, threads=threads)
    return lambda text: predictor.predict_logits([text])


def load_torch(folder: Path, file: str, threads: int, quantize: bool = False) -> Callable[[str], Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    if quantize:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.quantization is deprecated in favour of torchao; it still works
            model = torch.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def logits(text: str) -> Any:
        with torch.inference_mode():
            inputs = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            return model(**inputs).logits.numpy()

    return logits


LOADERS: dict[str, Callable[..., Callable[[str], Any]]] = {
    "onnx": load_onnx,
    "optimum": load_optimum,
    "slimformer": load_slimformer,
    "torch": load_torch,
    "torch-dynamic": lambda folder, file, threads: load_torch(folder, file, threads, quantize=True),
    "openvino": load_openvino,
    "ctranslate2": load_ctranslate2,
}


def wait_until_idle(step: float = 0.005, quiet: float = 0.0005, limit: float = 0.5) -> None:
    """Return once this process has stopped using the CPU: after a timed block, ONNX Runtime's idle workers (and
    OpenMP's) keep spinning for tens of ms, and the next model timed must not share the cores with them. The same
    rule as `slimformer.timing.wait_until_idle`, repeated here because this file also runs in `.venv-peers`,
    which has no slimformer."""
    started, used = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < limit:
        time.sleep(step)
        now = time.process_time()
        if now - used < quiet:
            return
        used = now


def versions() -> dict[str, str | None]:
    import importlib.metadata

    found = {}
    packages = ("onnxruntime", "tokenizers", "transformers", "torch", "optimum", "optimum-onnx", "slimformer")
    for package in (*packages, "openvino", "nncf", "ctranslate2"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(LOADERS), required=True)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--file", default="model.onnx", help="the ONNX file in the folder (onnx, optimum kinds)")
    parser.add_argument("--queries", required=True, help="JSON list of query texts")
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()

    queries = json.loads(Path(args.queries).read_text())
    tick = time.perf_counter()
    logits = LOADERS[args.kind](Path(args.model), args.file, args.threads)
    shape = list(logits(queries[0]).shape)
    info = {"kind": args.kind, "load_s": round(time.perf_counter() - tick, 2), "logits_shape": shape}
    print(json.dumps({"ready": True, "info": {**info, "versions": versions(), "python": sys.executable}}), flush=True)

    for line in sys.stdin:
        command, *rest = line.split(maxsplit=1)
        if command == "warmup":
            for i in range(int(rest[0])):
                logits(queries[i % len(queries)])
            answer: dict[str, Any] = {"ok": True}
        elif command == "time":
            timings = []
            for text in json.loads(rest[0]) if rest else queries:  # slimformer.timing's loop, repeated
                tick = time.perf_counter()
                logits(text)
                timings.append((time.perf_counter() - tick) * 1000)
            wait_until_idle()
            answer = {"ms": timings}
        elif command == "quit":
            return
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
