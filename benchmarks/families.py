"""ORT INT8 and structured-pruning speed-ups per encoder family, side by side, on random-weight classifiers
at each family's real base size (latency does not depend on the weights; the vocabulary is the tiny one the
tokenizer is trained on here, which changes file size, not latency).

Per family: fp32 and INT8 (dynamic) latency of the optimized ONNX graph, before and after structured pruning
(half the heads where the family allows it, half the FFN neurons), batch 1, the CLINC slice's validation
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
# each family's kind of tokenizer: (model: wordpiece | bpe | unigram, special tokens, [CLS] a [SEP] or <s> a </s>)
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
TOKENIZERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "bert": ("wordpiece", WORDPIECE_SPECIALS, "bert"),
    "distilbert": ("wordpiece", WORDPIECE_SPECIALS, "bert"),
    "electra": ("wordpiece", WORDPIECE_SPECIALS, "bert"),
    "mpnet": ("wordpiece", ROBERTA_SPECIALS, "roberta"),
    "roberta": ("bpe", ROBERTA_SPECIALS, "roberta"),
    "modernbert": ("bpe", WORDPIECE_SPECIALS, "bert"),
    "xlm-roberta": ("unigram", ROBERTA_SPECIALS, "roberta"),
    "deberta-v2": ("unigram", ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"), "bert"),
    "albert": ("unigram", ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"), "bert"),
}


def build_tokenizer(family: str, texts: list[str]) -> Any:
    """A fast tokenizer of the family's kind (WordPiece, byte-level BPE or Unigram) trained on `texts` in
    milliseconds: a few hundred tokens, enough for the graphs' shapes (latency does not depend on the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    kind, specials, pair_style = TOKENIZERS[family]
    unk = next(s for s in specials if "unk" in s.lower())
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token=unk))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=list(specials))
    elif kind == "bpe":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), initial_alphabet=alphabet)
    else:
        backend = Tokenizer(models.Unigram())
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=list(specials), unk_token=unk)
    backend.train_from_iterator(texts, trainer)
    if pair_style == "roberta":
        cls, sep, pad, mask = "<s>", "</s>", "<pad>", "<mask>"
    else:
        cls, sep, pad, mask = "[CLS]", "[SEP]", specials[0], "[MASK]"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, pad_token=pad, cls_token=cls, sep_token=sep, mask_token=mask
    )
    tokenizer.model_max_length = 64
    return tokenizer


def base_config(family: str, tokenizer: Any, labels: list[str]) -> Any:
    """The family's config at its base size (BASE_SHAPES), numbering the labels in dataset order."""
    from transformers import AutoConfig

    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "max_position_embeddings": 128 if family == "distilbert" else 130,
        **BASE_SHAPES[family],
    }
    if family == "electra":
        settings["embedding_size"] = 768
    elif family == "albert":
        settings.update(embedding_size=128, num_hidden_groups=1, inner_group_num=1)
    elif family == "deberta-v2":  # DeBERTa-v3's relative attention, no absolute positions
        settings.update(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            position_buckets=32,
            max_relative_positions=-1,
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            type_vocab_size=0,
        )
    elif family == "modernbert":
        settings.update(global_attn_every_n_layers=3, local_attention=16)
        settings.update(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
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
    from slimformer.families import family_for_model_type
    from slimformer.onnx import ExportConfig, OptimizeConfig, QuantizeConfig, export_onnx, optimize_onnx, quantize
    from slimformer.prune.stage import PruneConfig, prune

    texts = column(data.validation, "text")[:16]
    teacher = build_base_classifier(root / "teacher", family, column(data.train, "text"), data.labels)
    heads = 0.0 if family_for_model_type(family).head_pruning else 0.5  # MPNet: FFN neurons only
    pruning = PruneConfig(method="structured", heads_fraction=heads, ffn_fraction=0.5, epochs=0, max_length=64)
    prune(teacher, root / "pruned", pruning, data)
    result: dict[str, Any] = {"family": family, "heads_removed": heads, "ffn_removed": 0.5}
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
