"""MPNet's attention fused by slimformer's rewrite against the unfused graph ONNX Runtime leaves (issue 27).

ONNX Runtime's optimizer fuses no MPNet attention (its scores get a relative-position bias); `slimformer optimize`
rewrites each layer's attention as one MultiHeadAttention node (`slimformer.onnx.rewrites.fuse_biased_attention`).
This script builds random-weight MPNet classifiers at base width (768, 12 heads, FFN 3072: latency does not depend
on the weights) with 12 layers (MPNet-base, the teacher) and 3 layers (a student from its layers), exports each,
optimizes it with and without the rewrite, quantizes both to dynamic INT8, checks each pair's parity on CLINC150
queries, and times all of them side by side in rounds (batch 1, tokenization included: a WordPiece tokenizer
trained on CLINC150, so the token counts are those of real queries).

    .venv/bin/python benchmarks/mpnet_attention.py --threads 2 --out runs/mpnet_attention.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}


def build_mpnet(folder: Path, layers: int, texts: list[str], labels: list[str]) -> Path:
    """A random MPNet classifier of `layers` layers at base width, with a WordPiece tokenizer trained on `texts`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from slimformer.tokenizer_kinds import FAMILY_TOKENIZERS, family_settings, train_tokenizer, vocabulary_settings

    tokenizer = train_tokenizer(*FAMILY_TOKENIZERS["mpnet"], texts)
    settings = {**vocabulary_settings(tokenizer, labels), **BASE, "num_hidden_layers": layers}
    settings.update(family_settings("mpnet", tokenizer, BASE["hidden_size"]))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("mpnet", **settings))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def variants(source: Path, root: Path, data: Any) -> dict[str, Path]:
    """{name: ONNX folder}: fp32 and INT8, each with and without the attention rewrite."""
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize

    export_onnx(source, root / "export", ExportConfig(max_length=64, parity_examples=4), data)
    folders = {}
    for fused in (False, True):
        kind = "fused" if fused else "unfused"
        optimized = optimize_onnx(root / "export", root / kind, OptimizeConfig(max_length=64, biased_attention=fused))
        assert optimized["attention_fused_layers"] == (optimized["num_layers"] if fused else 0), optimized
        quantize(root / kind, root / f"{kind}-int8", QuantizeConfig(method="dynamic", max_length=64), data)
        folders[f"fp32 {kind}"], folders[f"int8 {kind}"] = root / kind, root / f"{kind}-int8"
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--layers", nargs="+", type=int, default=[12, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np

    from slimformer.cpu import cpu_model, isa_summary
    from slimformer.data import column, load_data
    from slimformer.predictor import load
    from slimformer.timing import (
        flat,
        interleaved_latencies_ms,
        latency_summary,
        predictor_timer,
        sample_queries,
        speedup_interval,
        split_rounds,
    )

    data = load_data(args.data)
    texts = column(data.test, "text")
    rounds = split_rounds(sample_queries(texts, args.queries), args.rounds)
    results: dict[str, Any] = {"cpu": {"model": cpu_model(), **isa_summary()}, "threads": args.threads, "rows": []}
    for layers in args.layers:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            source = build_mpnet(root / "model", layers, column(data.train, "text"), data.labels)
            folders = variants(source, root, data)
            predictors = {name: load(path, threads=args.threads, max_length=64) for name, path in folders.items()}
            for precision in ("fp32", "int8"):
                fused, unfused = (predictors[f"{precision} {kind}"] for kind in ("fused", "unfused"))
                gap = np.abs(fused.predict_logits(texts[:256]) - unfused.predict_logits(texts[:256])).max()
                results.setdefault("parity", {})[f"{layers} layers {precision}"] = float(gap)
            timers = {name: predictor_timer(predictor) for name, predictor in predictors.items()}
            timings = interleaved_latencies_ms(timers, rounds)
        for precision in ("fp32", "int8"):
            unfused, fused = timings[f"{precision} unfused"], timings[f"{precision} fused"]
            row = {
                "layers": layers,
                "precision": precision,
                "unfused_p50_ms": latency_summary(flat(unfused))["p50"],
                "fused_p50_ms": latency_summary(flat(fused))["p50"],
                "speedup": speedup_interval(unfused, fused),
            }
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(results["parity"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
