"""Classification metrics (scikit-learn; `evaluate.load` would need the hub)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def paired_drop_interval(
    reference_correct: np.ndarray,
    candidate_correct: np.ndarray,
    tolerance_points: float,
    confidence: float = 0.9,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """How many accuracy points a candidate loses against a reference on the same rows, with a paired bootstrap:
    rows are resampled together, so what both get right or wrong cancels. Returns the drop, its two-sided
    `confidence` interval, the share of resamples within `tolerance_points` (the confidence that the drop is
    within the tolerance) and the number of rows."""
    reference = np.asarray(reference_correct, dtype=float)
    candidate = np.asarray(candidate_correct, dtype=float)
    if reference.shape != candidate.shape or not len(reference):
        raise ValueError("a paired comparison needs both models' results on the same, non-empty rows")
    difference = 100 * (reference - candidate)  # per row: +100 the reference alone is right, -100 the candidate
    low, high, drops = bootstrap_interval(difference, np.mean, confidence, resamples, seed)
    return {
        "drop_points": round(float(difference.mean()), 3),
        "low": round(float(low), 3),
        "high": round(float(high), 3),
        "p_within_tolerance": round(float((drops <= tolerance_points).mean()), 3),
        "rows": len(difference),
    }


def bootstrap_interval(
    values: np.ndarray, statistic: Any, confidence: float = 0.9, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, np.ndarray]:
    """A two-sided `confidence` percentile bootstrap interval of `statistic` (a numpy reduction taking `axis`,
    e.g. np.mean or np.median) over `values`, seeded; also returns the resampled statistics."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    samples = statistic(values[rng.integers(0, len(values), size=(resamples, len(values)))], axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high), samples
