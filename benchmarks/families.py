"""ORT INT8 and structured-pruning speed-ups per encoder family, side by side, on random-weight classifiers
at each family's real base size (latency does not depend on the weights; the vocabulary is the tiny one the
tokenizer is trained on here, which changes file size, not latency).

Per family: fp32 and INT8 (dynamic) latency of the optimized ONNX graph, before and after structured pruning
(half the heads, half the FFN neurons), batch 1, the CLINC slice's validation
queries, `--threads` intra-op threads. Run from the repository root:

    .venv/bin/python benchmarks/families.py --data CSV_FOLDER --families bert distilbert --out families.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

BASE_SHAPES: dict[str, dict[str, Any]] = {
    "bert": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "distilbert": {"dim": 768, "n_heads": 12, "hidden_dim": 3072, "n_layers": 6},
    "roberta": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "xlm-roberta": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "electra": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "mpnet": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "deberta-v2": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "albert": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_hidden_layers": 12},
    "modernbert": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 1152, "num_hidden_layers": 22},
}


def build_tokenizer(family: str, texts: list[str]) -> Any:
    """A fast tokenizer of the family's kind trained on `texts` in milliseconds: a few hundred tokens, enough
    for the graphs' shapes (latency does not depend on the vocabulary)."""
    from slimformer.tokenizer_kinds import FAMILY_TOKENIZERS, train_tokenizer

    return train_tokenizer(*FAMILY_TOKENIZERS[family], texts)


def base_config(family: str, tokenizer: Any, labels: list[str]) -> Any:
    """The family's config at its base size (BASE_SHAPES), numbering the labels in dataset order."""
    from transformers import AutoConfig

    from slimformer.tokenizer_kinds import family_settings, vocabulary_settings

    settings: dict[str, Any] = {
        **vocabulary_settings(tokenizer, labels),
        "max_position_embeddings": 128 if family == "distilbert" else 130,
        **BASE_SHAPES[family],
    }
    embedding_size = 128 if family == "albert" else 768
    settings.update(family_settings(family, tokenizer, embedding_size))
    return AutoConfig.for_model(family, **settings)


def build_base_classifier(folder: Path, family: str, texts: list[str], labels: list[str]) -> Path:
    """A random-weight classifier of `family` at its base size, saved with its tokenizer to `folder`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = build_tokenizer(family, texts)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(base_config(family, tokenizer, labels))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def latency_ms(onnx_dir: Path, texts: list[str], threads: int, repeats: int) -> float:
    """Median per-query latency (batch 1) of an ONNX folder's model.onnx. Its own loop, not slimformer.timing:
    session.run on inputs tokenized beforehand, because this tokenizer is a toy one trained here (its time would
    not be the family's)."""
    import onnxruntime as ort

    from slimformer.models import load_tokenizer
    from slimformer.predictor import session_options

    options = session_options(threads)
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tokenizer = load_tokenizer(onnx_dir)
    feeds = [{k: v for k, v in tokenizer(text, return_tensors="np").items() if k in names} for text in texts]
    for feed in feeds[:5]:
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        for feed in feeds:
            started = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def measure(family: str, root: Path, data: Any, threads: int, repeats: int) -> dict[str, Any]:
    from slimformer.data import column
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.prune.stage import PruneConfig, prune

    texts = column(data.validation, "text")[:16]
    teacher = build_base_classifier(root / "teacher", family, column(data.train, "text"), data.labels)
    pruning = PruneConfig(method="structured", heads_fraction=0.5, ffn_fraction=0.5, epochs=0, max_length=64)
    prune(teacher, root / "pruned", pruning, data)
    result: dict[str, Any] = {"family": family, "heads_removed": 0.5, "ffn_removed": 0.5}
    for name, source in (("base", teacher), ("pruned", root / "pruned")):
        export_onnx(source, root / f"{name}-onnx", ExportConfig(max_length=64, parity_examples=4), data)
        optimized = optimize_onnx(root / f"{name}-onnx", root / f"{name}-opt", OptimizeConfig(max_length=64))
        quantize(root / f"{name}-opt", root / f"{name}-int8", QuantizeConfig(max_length=64, max_eval_samples=8), data)
        result[f"{name}_attention_fusion"] = optimized["attention_fusion"]
        result[f"{name}_fp32_ms"] = latency_ms(root / f"{name}-opt", texts, threads, repeats)
        result[f"{name}_int8_ms"] = latency_ms(root / f"{name}-int8", texts, threads, repeats)
    result["int8_speedup"] = round(result["base_fp32_ms"] / result["base_int8_ms"], 2)
    result["pruning_speedup_fp32"] = round(result["base_fp32_ms"] / result["pruned_fp32_ms"], 2)
    result["pruned_int8_speedup_vs_base_fp32"] = round(result["base_fp32_ms"] / result["pruned_int8_ms"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(BASE_SHAPES))
    parser.add_argument("--data", required=True, help="a folder of train/validation/test csv (e.g. a CLINC slice)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from slimformer.cpu import cpu_model, isa_summary
    from slimformer.data import load_data

    data = load_data(args.data)
    results = {"cpu": {"model": cpu_model(), **isa_summary()}, "threads": args.threads, "families": []}
    for family in args.families:
        with tempfile.TemporaryDirectory() as folder:
            row = measure(family, Path(folder), data, args.threads, args.repeats)
        results["families"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
