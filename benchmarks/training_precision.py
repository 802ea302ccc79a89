"""How much faster a training step is in bf16 autocast than in fp32 on this CPU (the `precision` option).

A BERT classifier of the packaged teacher's shape (MiniLM-L6-H384: 6 layers, hidden 384, 12 heads, FFN 1,536,
30,522-token vocabulary, 151 labels; random weights: step time does not depend on them) takes AdamW steps on
random batches of `--batch` x `--tokens` ids, alternating fp32 and bf16 blocks of `--steps` steps after a
warm-up, and prints the median ms per step of each. Run from the repository root:

    .venv/bin/python benchmarks/training_precision.py [--batch 32] [--tokens 14] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    config.num_labels = 151
    model = BertForSequenceClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 30000, (args.batch, args.tokens))
    labels = torch.randint(0, 151, (args.batch,))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    # its own loop, not slimformer.timing: a training step (forward, backward, AdamW), not a batch-1 prediction
    timings: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in timings:
            for _ in range(3):  # warm-up after the switch
                step(name == "bf16")
            for _ in range(args.steps):
                tick = time.perf_counter()
                step(name == "bf16")
                timings[name].append((time.perf_counter() - tick) * 1000)
    fp32, bf16 = (statistics.median(timings[name]) for name in ("fp32", "bf16"))
    native = "native bf16" if has_bf16() else "no native bf16 (emulated)"
    print(f"{cpu_model()} ({native}), {torch.get_num_threads()} threads, batch {args.batch} x {args.tokens} tokens")
    print(f"fp32 {fp32:.0f} ms/step, bf16 {bf16:.0f} ms/step: bf16 {fp32 / bf16:.2f}x faster")


if __name__ == "__main__":
    main()
