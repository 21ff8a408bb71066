"""Splits and class weights for annotation: stratified, seeded, honouring a split column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scpeft_hf.errors import InvalidInputError, MissingKeyError, ScpeftUserError
from scpeft_hf.tasks.splits import balanced_class_weights, drop_rare_classes, held_out_mask, make_splits


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


# ------------------------------------------------------------------------------------- group hold-out


def donor_obs() -> pd.DataFrame:
    """Four donors with uneven class mixes, like a pancreas atlas."""
    rows = [("d1", "alpha", 30), ("d1", "beta", 20), ("d2", "alpha", 10), ("d2", "beta", 40), ("d2", "delta", 10),
            ("d3", "alpha", 25), ("d3", "delta", 5), ("d4", "beta", 8)]  # fmt: skip
    donors = np.concatenate([[donor] * n for donor, _, n in rows])
    types = np.concatenate([[cell_type] * n for _, cell_type, n in rows])
    return pd.DataFrame({"donor": donors, "cell_type": types})


def test_held_out_groups_are_the_test_split_and_validation_is_stratified_from_the_rest():
    obs = donor_obs()
    mask = held_out_mask(obs, {"donor": ["d1", "d4"]})
    assert mask.sum() == 58 and set(obs.donor[mask]) == {"d1", "d4"}
    splits = make_splits(obs["cell_type"], validation_fraction=0.2, seed=5, test_mask=mask)
    assert np.array_equal(splits["test"], np.flatnonzero(mask))
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(obs)))
    rest = obs[~mask]
    assert set(rest.index) == set(splits["train"]) | set(splits["validation"])
    # 20% of each class among the remaining donors (alpha 35, beta 40, delta 15).
    assert obs.cell_type[splits["validation"]].value_counts().to_dict() == {"alpha": 7, "beta": 8, "delta": 3}
    again = make_splits(obs["cell_type"], validation_fraction=0.2, seed=5, test_mask=mask)
    assert np.array_equal(again["validation"], splits["validation"])
    # The string form of --test-groups selects the same cells.
    assert np.array_equal(held_out_mask(obs, "donor=d1,d4"), mask)


@pytest.mark.parametrize(
    ("groups", "error", "message"),
    [
        ({"batch": ["d1"]}, MissingKeyError, r"Test-group column 'batch' is not in adata.obs; available columns: donor"),
        ({"donor": ["d1", "d9"]}, InvalidInputError, r"Test group\(s\) \['d9'\] are not values of adata.obs\['donor'\]"),
        ("donor=d1,d2,d3,d4", InvalidInputError, r"leaves no training cells"),
        ("donor", InvalidInputError, r"--test-groups 'donor' is not KEY=VALUE"),
        ("donor=", InvalidInputError, r"is not KEY=VALUE"),
        ({"donor": ["d1"], "cell_type": ["beta"]}, InvalidInputError, r"hold out groups of one obs column"),
    ],
)  # fmt: skip
def test_bad_test_groups_are_one_line_user_errors(groups, error, message):
    with pytest.raises(error, match=message) as raised:
        held_out_mask(donor_obs(), groups)
    assert isinstance(raised.value, ScpeftUserError) and "\n" not in str(raised.value)


def test_test_groups_and_a_split_column_exclude_each_other():
    obs = donor_obs()
    column = pd.Series(["train", "test"] * (len(obs) // 2), name="split")
    with pytest.raises(InvalidInputError, match="either a split column or test groups"):
        make_splits(obs["cell_type"], column, test_mask=held_out_mask(obs, "donor=d1"))


def test_min_cells_per_class_drops_rarer_classes_and_reports_them():
    y = labels({"T": 100, "B": 50, "NK": 10, "rare": 9, "single": 1})
    keep, dropped = drop_rare_classes(y, 10)
    assert dropped == {"rare": 9, "single": 1}
    assert keep.sum() == 160 and set(y[keep]) == {"T", "B", "NK"}
    assert drop_rare_classes(y, None)[1] == {} and drop_rare_classes(y, None)[0].all()
