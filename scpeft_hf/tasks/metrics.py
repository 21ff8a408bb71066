"""Classification metrics reported for annotation: accuracy, macro-F1 and balanced accuracy."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Metrics over the classes present in `labels` or `predictions` (scPEFT's "accuracy" is balanced accuracy)."""
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
    }


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`transformers.Trainer` hook: logits -> argmax -> `classification_metrics`."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return classification_metrics(np.asarray(eval_prediction.label_ids), np.asarray(logits).argmax(-1))
