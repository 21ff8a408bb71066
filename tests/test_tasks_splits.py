"""Splits and class weights for annotation: stratified, seeded, honouring a split column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scpeft_hf.tasks.splits import balanced_class_weights, make_splits


def labels(counts: dict[str, int]) -> pd.Series:
    return pd.Series(np.repeat(list(counts), list(counts.values())), name="cell_type")


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    y = labels({"T": 100, "B": 50, "NK": 10, "rare": 2, "single": 1})
    splits = make_splits(y, seed=3)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(y)))
    test = y.iloc[splits["test"]].value_counts()
    assert test.to_dict() == {"T": 20, "B": 10, "NK": 2, "rare": 1}  # the singleton stays in training
    validation = y.iloc[splits["validation"]].value_counts()
    assert validation["T"] == 8 and validation["B"] == 4 and validation["NK"] == 1
    again = make_splits(y, seed=3)
    other = make_splits(y, seed=4)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["test"], other["test"])


def test_split_column_is_honoured_and_validation_carved_from_train():
    y = labels({"T": 40, "B": 40})
    column = pd.Series(["train"] * 30 + ["test"] * 10 + ["train"] * 30 + ["test"] * 10, name="split")
    splits = make_splits(y, column, validation_fraction=0.2)
    assert set(splits["test"]) == set(np.flatnonzero(column == "test"))
    assert len(splits["validation"]) == 12 and set(splits["validation"]) <= set(
        np.flatnonzero(column == "train")
    )
    assert not set(splits["validation"]) & set(splits["train"])
    with_validation = column.copy()
    with_validation[:5] = "validation"
    assert make_splits(y, with_validation)["validation"].tolist() == [0, 1, 2, 3, 4]


def test_split_column_with_unknown_values_is_rejected():
    y = labels({"T": 4})
    with pytest.raises(ValueError, match=r"\['holdout'\]; use only train, validation, test"):
        make_splits(y, pd.Series(["train", "test", "holdout", "train"], name="split"))


def test_class_weights_come_from_training_labels_only():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx([4 / 6, 2.0])
    with pytest.raises(ValueError, match=r"Classes \[2\] have no training cells"):
        balanced_class_weights(np.array([0, 1]), 3)
