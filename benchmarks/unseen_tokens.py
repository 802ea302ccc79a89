"""Where in-scope accuracy goes along a chain: each model's in-scope accuracy on the test queries whose tokens all
occur in the training split, and on those with a token that never does (vocabulary clustering replaces such a
token's embedding row by a shared centroid; distillation may lose more on rare words too).

    .venv/bin/python benchmarks/unseen_tokens.py demo/stages/01-finetune-teacher-* demo/stages/04-distill-* \
        demo/stages/05-prune-* demo/model --json runs/unseen_tokens.json

The split is made with the first model's tokenizer; every model is scored on the same queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from slimformer.data import column, label_positions, load_data
    from slimformer.models import load_tokenizer
    from slimformer.predictor import load

    data = load_data(args.data)
    texts, labels = column(data.test, "text"), np.array(column(data.test, "label"))
    tokenizer = load_tokenizer(args.models[0])
    seen = {token for text in column(data.train, "text") for token in tokenizer(text)["input_ids"]}
    unseen = np.array([any(token not in seen for token in tokenizer(text)["input_ids"]) for text in texts])
    in_scope = labels != data.oos_label_id
    rows = []
    for path in args.models:
        predictor = load(path, threads=args.threads)
        predicted = label_positions(predictor.labels, data.labels)[predictor.predict_logits(texts, 64).argmax(-1)]
        correct = predicted == labels
        rows.append(
            {
                "model": str(path),
                "in_scope": float(correct[in_scope].mean()),
                "in_scope_seen_tokens": float(correct[in_scope & ~unseen].mean()),
                "in_scope_unseen_tokens": float(correct[in_scope & unseen].mean()),
                "oos_recall": float(correct[~in_scope].mean()),
            }
        )
    print(f"in-scope test queries: {in_scope.sum()}, {(in_scope & unseen).sum()} with a token unseen in training")
    print("| model | in scope | only seen tokens | an unseen token | OOS recall |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {Path(row['model']).name} | {100 * row['in_scope']:.2f} | {100 * row['in_scope_seen_tokens']:.2f} "
            f"| {100 * row['in_scope_unseen_tokens']:.2f} | {100 * row['oos_recall']:.1f} |"
        )
    if args.json:
        counts = {"in_scope": int(in_scope.sum()), "in_scope_with_unseen": int((in_scope & unseen).sum())}
        args.json.write_text(json.dumps({"queries": counts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
