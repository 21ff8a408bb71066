"""Train / validation / test splits of cells: seeded, stratified by label, read from an obs column, or holding
out whole groups (donors, batches) as the test split."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import InvalidInputError, MissingKeyError

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


def parse_test_groups(spec: str) -> dict[str, list[str]]:
    """`"donor=human1,human2"` -> `{"donor": ["human1", "human2"]}` (the `--test-groups` syntax)."""
    key, sep, values = spec.partition("=")
    groups = [value.strip() for value in values.split(",") if value.strip()]
    if not sep or not key.strip() or not groups:
        raise InvalidInputError(
            f"--test-groups {spec!r} is not KEY=VALUE[,VALUE...]; write e.g. --test-groups donor=human1,human2"
        )
    return {key.strip(): groups}


def normalise_test_groups(test_groups: Mapping[str, Sequence[str] | str] | str) -> dict[str, list[str]]:
    """`{"donor": ["human1"]}`, `{"donor": "human1"}` or `"donor=human1"` -> `{"donor": ["human1"]}`."""
    if isinstance(test_groups, str):
        return parse_test_groups(test_groups)
    if len(test_groups) != 1:
        raise InvalidInputError(
            f"test_groups names {len(test_groups)} columns ({', '.join(map(str, test_groups))}); hold out groups "
            "of one obs column, e.g. {'donor': ['human1']}"
        )
    return {
        str(key): [values] if isinstance(values, str) else [str(value) for value in values]
        for key, values in test_groups.items()
    }


def held_out_mask(obs: pd.DataFrame, test_groups: Mapping[str, Sequence[str] | str] | str) -> np.ndarray:
    """Boolean mask of the cells in the held-out groups: `{"donor": ["human1"]}` or `"donor=human1"`."""
    test_groups = normalise_test_groups(test_groups)
    ((key, values),) = test_groups.items()
    if key not in obs:
        raise MissingKeyError(
            f"Test-group column '{key}' is not in adata.obs; available columns: {', '.join(map(str, obs))}"
        )
    column = obs[key].astype(str)
    present = set(column.unique())
    unknown = [value for value in values if value not in present]
    if unknown:
        raise InvalidInputError(
            f"Test group(s) {unknown} are not values of adata.obs['{key}']; its values are "
            f"{', '.join(sorted(present)[:20])}{' ...' if len(present) > 20 else ''}"
        )
    mask = column.isin(values).to_numpy()
    if mask.all():
        raise InvalidInputError(
            f"Holding out {key}={','.join(values)} leaves no training cells (every cell is in those groups); "
            "hold out fewer groups"
        )
    return mask


def drop_rare_classes(labels: pd.Series, min_cells: int | None) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of the cells whose class has at least `min_cells` cells, and the dropped classes with their sizes."""
    values = labels.astype(str)
    if not min_cells or min_cells <= 1:
        return np.ones(len(values), dtype=bool), {}
    counts = values.value_counts()
    rare = counts[counts < min_cells]
    dropped = {str(name): int(count) for name, count in rare.sort_index().items()}
    if dropped:
        logger.warning(
            "Dropping %d classes with fewer than %d cells (%d cells): %s",
            len(dropped), min_cells, sum(dropped.values()),
            ", ".join(f"{name} ({count})" for name, count in dropped.items()),
        )  # fmt: skip
    return ~values.isin(list(dropped)).to_numpy(), dropped


def make_splits(
    labels: pd.Series,
    split_column: pd.Series | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 0,
    test_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Integer positions of each split.

    Without `split_column` or `test_mask`: a stratified test split of `test_fraction`, then a stratified
    validation split of `validation_fraction` of the remainder. With `split_column`: its values must be
    train/validation/test; when it has no validation rows, a validation split is carved from train the same
    way. With `test_mask` (see `held_out_mask`): exactly those cells are the test split, and validation is
    carved from the rest, stratified.
    """
    label_values = labels.astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    positions = np.arange(len(label_values))
    if split_column is not None and test_mask is not None:
        raise InvalidInputError("Give either a split column or test groups, not both")
    if test_mask is not None:
        test = np.flatnonzero(test_mask)
        rest = np.flatnonzero(~np.asarray(test_mask, dtype=bool))
        if len(test) == 0 or len(rest) == 0:
            raise InvalidInputError(
                f"The held-out test groups hold {len(test)} of {len(label_values)} cells; both the test and the "
                "training part need cells"
            )
    elif split_column is None:
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
            "drop those cells, move some of them to 'train' in the split column, or drop rare classes with "
            "--min-cells-per-class N"
        )


def split_cells(
    adata: AnnData,
    label_key: str,
    split_key: str | None = None,
    test_groups: Mapping[str, Sequence[str] | str] | str | None = None,
    min_cells_per_class: int | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[AnnData, dict[str, np.ndarray], dict[str, int]]:
    """What `train` does before training: drop rare classes, then split (by `split_key`, by held-out
    `test_groups`, or stratified). Returns the kept cells (a view when classes were dropped), the positions of
    each split in them, and the dropped classes with their sizes."""
    test_mask = held_out_mask(adata.obs, test_groups) if test_groups is not None else None
    keep, dropped = drop_rare_classes(adata.obs[label_key], min_cells_per_class)
    if dropped:
        adata, test_mask = adata[keep], None if test_mask is None else test_mask[keep]
    splits = make_splits(
        adata.obs[label_key],
        adata.obs[split_key] if split_key else None,
        test_fraction,
        validation_fraction,
        seed,
        test_mask=test_mask,
    )
    return adata, splits, dropped


def balanced_class_weights(train_labels: np.ndarray, num_classes: int) -> list[float]:
    """`n / (k * count_c)` from the training split only; every class must have training cells."""
    counts = np.bincount(train_labels, minlength=num_classes)
    if (counts == 0).any():
        raise InvalidInputError(f"Classes {np.flatnonzero(counts == 0).tolist()} have no training cells")
    return (counts.sum() / (num_classes * counts)).astype(float).tolist()
