"""How long a training step takes on this CPU in each training arithmetic and with the word table fixed
(the `precision` and `freeze_word_embeddings` options).

A BERT classifier of the packaged teacher's shape (MiniLM-L6-H384: 6 layers, hidden 384, 12 heads, FFN 1,536,
30,522-token vocabulary, 151 labels) or of the recipe's student (`--layers 3 --ffn 768`), random weights (step time
does not depend on them), takes AdamW steps (fused, as the Trainer's default) on random batches of `--batch` x
`--tokens` ids. The variants alternate in blocks of `--steps` steps after a warm-up; the median ms per step of
each is printed. Run from the repository root:

    .venv/bin/python benchmarks/training_step.py [--layers 6] [--ffn 1536] [--batch 32] [--tokens 14]
"""

from __future__ import annotations

import argparse
import statistics
import time

VARIANTS = {"fp32": (False, False), "bf16": (True, False), "fp32, word table fixed": (False, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=14)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from slimformer.cpu import cpu_model, has_bf16

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=args.layers,
        num_attention_heads=12,
        intermediate_size=args.ffn,
        num_labels=151,
    )
    model = BertForSequenceClassification(config).train()
    table = model.get_input_embeddings().weight
    optimizers = {
        frozen: torch.optim.AdamW([p for p in model.parameters() if not (frozen and p is table)], lr=1e-4, fused=True)
        for frozen in (False, True)
    }
    ids = torch.randint(1000, 30000, (args.batch, args.tokens))
    labels = torch.randint(0, 151, (args.batch,))

    def step(bf16: bool, frozen: bool) -> None:
        table.requires_grad_(not frozen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizers[frozen].step()
        optimizers[frozen].zero_grad()

    # its own loop, not slimformer.timing: a training step (forward, backward, AdamW), not a batch-1 prediction
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (bf16, frozen) in VARIANTS.items():
            for _ in range(3):  # warm-up after the switch
                step(bf16, frozen)
            for _ in range(args.steps):
                tick = time.perf_counter()
                step(bf16, frozen)
                timings[name].append((time.perf_counter() - tick) * 1000)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    native = "native bf16" if has_bf16() else "no native bf16 (emulated)"
    print(
        f"{cpu_model()} ({native}), {torch.get_num_threads()} threads, {args.layers} layers, FFN {args.ffn}, "
        f"batch {args.batch} x {args.tokens} tokens"
    )
    for name, median in medians.items():
        print(f"{name}: {median:.0f} ms/step ({medians['fp32'] / median:.2f}x fp32's speed)")


if __name__ == "__main__":
    main()
