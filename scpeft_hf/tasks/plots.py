"""Figures written next to a trained model: a confusion matrix and a UMAP of test-cell embeddings.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so importing or calling this module
never changes the global backend or figure state (inline plots in notebooks keep working).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def plot_confusion_matrix(labels: np.ndarray, predictions: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (each true class sums to 1), with every class on both axes."""
    size = max(6.0, 0.55 * len(names) + 2)
    figure = Figure(figsize=(size, size))
    axis = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels,
        predictions,
        labels=np.arange(len(names)),
        display_labels=names,
        normalize="true",
        values_format=".2f",
        xticks_rotation="vertical",
        colorbar=False,
        ax=axis,
    )
    axis.set_title("Test cells: true vs predicted (row-normalised)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_umap(
    embeddings: np.ndarray, names: list[str], labels: np.ndarray, predictions: np.ndarray, path: Path
) -> None:
    """UMAP of cell embeddings coloured by true and by predicted cell type."""
    cells = ad.AnnData(obsm={"X_scpeft": embeddings}, obs={"true": np.asarray(names, dtype=object)[labels]})
    cells.obs["predicted"] = np.asarray(names, dtype=object)[predictions]
    for column in ("true", "predicted"):
        cells.obs[column] = cells.obs[column].astype("category")
    sc.pp.neighbors(cells, use_rep="X_scpeft", n_neighbors=min(15, max(2, cells.n_obs - 1)), random_state=0)
    sc.tl.umap(cells, random_state=0)
    figure = Figure(figsize=(12, 5), layout="constrained")
    for axis, column in zip(figure.subplots(1, 2), ("true", "predicted"), strict=True):
        sc.pl.umap(cells, color=column, ax=axis, show=False)
    figure.savefig(path, dpi=120, bbox_inches="tight")
