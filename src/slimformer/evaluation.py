"""Accuracy of any predictor on a split: the one scoring path outside a training loop (untrained models,
exported and quantized graphs, the benchmark). Inference itself is the :class:`~slimformer.predictor.Predictor`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.data import column, label_positions
from slimformer.metrics import classification_metrics

if TYPE_CHECKING:
    import datasets

    from slimformer.data import DataSplits
    from slimformer.predictor import Predictor

EVAL_BATCH_SIZE = 128


def split_logits(predictor: Predictor, split: datasets.Dataset, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Logits of every text of `split`, shape (rows, labels), columns in the predictor's label order."""
    return predictor.predict_logits(column(split, "text"), batch_size=batch_size)


def score_logits(logits: np.ndarray, model_labels: list[str], label_ids: list[int], data: DataSplits) -> dict:
    """Classification metrics of `logits` (columns in `model_labels` order) against dataset label ids."""
    predicted = label_positions(model_labels, data.labels)[logits.argmax(axis=-1)]
    return classification_metrics(label_ids, predicted, data.oos_label_id)


def evaluate_predictor(predictor: Predictor, split: datasets.Dataset, data: DataSplits) -> dict[str, float]:
    """Accuracy, macro-F1 (and in-scope accuracy / OOS recall) of `predictor` on `split` of `data`."""
    return score_logits(split_logits(predictor, split), predictor.labels, column(split, "label"), data)


def correct_rows(predictor: Predictor, split: datasets.Dataset, data: DataSplits) -> np.ndarray:
    """For each row of `split`, whether `predictor` labels it right (bool array): what a paired comparison of two
    models on the same rows needs (:func:`slimformer.metrics.paired_drop_interval`)."""
    predicted = label_positions(predictor.labels, data.labels)[split_logits(predictor, split).argmax(axis=-1)]
    return predicted == np.asarray(column(split, "label"))


def evaluate_model(model: Any, tokenizer: Any, split: datasets.Dataset, data: DataSplits, max_length: int) -> dict:
    """The same for an in-memory PyTorch classifier, truncated at `max_length`."""
    from slimformer.predictor import TorchPredictor

    return evaluate_predictor(TorchPredictor.from_model(model, tokenizer, max_length), split, data)
