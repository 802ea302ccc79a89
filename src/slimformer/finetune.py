"""`slimformer finetune`: a checkpoint (or the packaged MiniLM body) trained into a classifier for a dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slimformer.artifacts import atomic_output_dir, write_metrics, write_session
from slimformer.config import option
from slimformer.training import TrainingOptions


@dataclass
class FinetuneConfig(TrainingOptions):
    """Options of `slimformer finetune`; the defaults suit CLINC150's 151 short intents on a small BERT."""

    group_by_length: bool = option(True, "Batch texts of similar length: far less padding, ~2x faster on CPU.")


def finetune(
    source: str | Path,
    output: str | Path,
    config: FinetuneConfig | None = None,
    data: Any = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Train `source` (folder or ``default``) on `data` (a DataSplits) and write an HF checkpoint to `output`.

    The folder gets model.safetensors, the tokenizer, config.json with id2label, `session.json` (the truncation
    length, which every later stage inherits) and `metrics.json` with validation and test metrics, both
    measured at the training length. `teacher` is part of the stage contract and unused. Returns the metrics.
    """
    from transformers import set_seed

    from slimformer.data import require_data
    from slimformer.models import load_classifier, load_tokenizer, resolve_max_length, resolve_model_path
    from slimformer.training import train_classifier

    config = config or FinetuneConfig()
    config.validate()
    data = require_data(data, "finetune")
    model_path = resolve_model_path(source)
    config = replace(config, max_length=resolve_max_length(model_path, config.max_length))
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    set_seed(config.seed)  # the new classification head's initialisation is part of the seeded run
    tokenizer = load_tokenizer(model_path)
    classifier = load_classifier(model_path, labels=splits.labels)

    with atomic_output_dir(output) as folder:
        result = train_classifier(classifier, tokenizer, splits, config, folder / "trainer")
        classifier.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_session(folder, config.max_length)
        metrics = {
            "stage": "finetune",
            "base_model": str(source),
            "data": splits.name,
            "data_fingerprint": splits.fingerprint,
            "config": asdict(config),
            **result.metrics(),
        }
        write_metrics(folder, metrics)
    return metrics
