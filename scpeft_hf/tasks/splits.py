"""Train / validation / test splits of cells: seeded, stratified by label, or read from an obs column."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


def stratified_indices(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Positions holding `fraction` of every class (rounded, at least one when a class has two or more cells)."""
    chosen = []
    for label in pd.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0  # a singleton class stays in the larger part
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def make_splits(
    labels: pd.Series,
    split_column: pd.Series | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Integer positions of each split.

    Without `split_column`: a stratified test split of `test_fraction`, then a stratified validation split of
    `validation_fraction` of the remainder. With it: its values must be train/validation/test; when it has no
    validation rows, a validation split is carved from train the same way.
    """
    label_values = labels.astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    positions = np.arange(len(label_values))
    if split_column is None:
        test = stratified_indices(label_values, test_fraction, rng)
        rest = np.setdiff1d(positions, test)
    else:
        split_values = split_column.astype(str).to_numpy()
        unknown = sorted(set(split_values) - set(SPLIT_NAMES))
        if unknown:
            raise InvalidInputError(
                f"Split column '{split_column.name}' has values {unknown}; use only {', '.join(SPLIT_NAMES)}"
            )
        test = np.flatnonzero(split_values == "test")
        rest = np.flatnonzero(split_values == "train")
        validation = np.flatnonzero(split_values == "validation")
        empty = [name for name, rows in (("train", rest), ("test", test)) if len(rows) == 0]
        if empty:
            raise InvalidInputError(
                f"Split column '{split_column.name}' has no '{empty[0]}' cells; mark some cells '{empty[0]}' "
                "(it needs 'train' and 'test' cells), or leave out the split column for a seeded stratified split"
            )
        if len(validation):
            return {"train": rest, "validation": validation, "test": test}
        logger.info("Split column '%s' has no validation rows: carving them from train", split_column.name)
    validation = rest[stratified_indices(label_values[rest], validation_fraction, rng)]
    return {"train": np.setdiff1d(rest, validation), "validation": validation, "test": test}


def check_training_classes(train_labels: np.ndarray, label_names: list[str]) -> None:
    """Every class needs training cells: a class seen only in validation or test can never be predicted."""
    counts = np.bincount(train_labels, minlength=len(label_names))
    empty = [label_names[index] for index in np.flatnonzero(counts == 0)]
    if empty:
        raise InvalidInputError(
            f"Cell types {empty} have no training cells (all their cells are in the validation or test split); "
            "drop those cells, or move some of them to 'train' in the split column"
        )


def balanced_class_weights(train_labels: np.ndarray, num_classes: int) -> list[float]:
    """`n / (k * count_c)` from the training split only; every class must have training cells."""
    counts = np.bincount(train_labels, minlength=num_classes)
    if (counts == 0).any():
        raise InvalidInputError(f"Classes {np.flatnonzero(counts == 0).tolist()} have no training cells")
    return (counts.sum() / (num_classes * counts)).astype(float).tolist()
