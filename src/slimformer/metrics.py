"""Classification metrics (scikit-learn; `evaluate.load` would need the hub)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, oos_label_id: int | None = None
) -> dict[str, float]:
    """Accuracy and macro-F1; with an out-of-scope label also in-scope accuracy and OOS recall."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # over the dataset's labels seen here: a head's extra labels (predicted as -1) count only as errors
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=_scored_labels(y_true, y_pred), average="macro", zero_division=0)
        ),
    }
    if oos_label_id is not None:
        in_scope = y_true != oos_label_id
        if in_scope.any():
            metrics["in_scope_accuracy"] = float((y_pred[in_scope] == y_true[in_scope]).mean())
        if (~in_scope).any():
            metrics["oos_recall"] = float((y_pred[~in_scope] == oos_label_id).mean())
    return metrics


def _scored_labels(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """The labels macro-F1 averages over: those in either array, less the negative "not a dataset label"."""
    labels = np.union1d(y_true, y_pred)
    return labels[labels >= 0]
