"""Classification metrics reported for annotation: accuracy, macro-F1 and balanced accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from ..errors import InvalidInputError, MissingFileError


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


def read_label_map(path: str | Path) -> dict[str, str]:
    """A two-column file of label spellings that mean the same type (`T_cell,t_cell`), read both ways."""
    if not Path(path).is_file():
        raise MissingFileError(
            f"--label-map {path} does not exist; pass a CSV with two columns of label spellings"
        )
    table = pd.read_csv(path, header=None, sep=None, engine="python", dtype=str)
    if table.shape[1] != 2:
        raise InvalidInputError(
            f"--label-map {path} has {table.shape[1]} columns; it needs two (a spelling in the data, the "
            f"adapter's spelling), one pair per line"
        )
    pairs = table.dropna().itertuples(index=False)
    return {a: b for left, right in pairs for a, b in ((left, right), (right, left))}


def label_transfer_metrics(
    true_labels,
    predictions,
    model_labels: list[str],
    label_map: dict[str, str] | None = None,
    shared_only: bool = False,
) -> dict:
    """Score predictions against labels that may be spelled differently or unknown to the model.

    Each true label is kept when the model knows it, else replaced by its `label_map` partner when the model
    knows that. Cells whose label the model never saw count as errors, unless `shared_only` leaves them out.
    """
    known = set(model_labels)
    label_map = label_map or {}
    truth = pd.Series(np.asarray(true_labels).astype(str)).map(
        lambda label: label if label in known or label_map.get(label) not in known else label_map[label]
    )
    shared = truth.isin(known).to_numpy()
    unseen = sorted(set(truth[~shared]))
    if shared_only and not shared.any():
        raise InvalidInputError(
            f"none of the labels {sorted(set(truth))[:10]} is one the adapter knows ({model_labels[:10]}); "
            f"pass --label-map FILE to match their spellings"
        )
    scored = shared if shared_only else np.ones(len(truth), dtype=bool)
    metrics = classification_metrics(truth.to_numpy()[scored], np.asarray(predictions).astype(str)[scored])
    return {
        **metrics,
        "n_cells": len(truth),
        "n_scored": int(scored.sum()),
        "n_excluded": int(len(truth) - scored.sum()),
        "unseen_labels": unseen,
        "n_unseen_label_cells": int((~shared).sum()),
        "shared_labels_only": shared_only,
    }
