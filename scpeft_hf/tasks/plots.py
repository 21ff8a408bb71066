"""Figures written next to a trained model (a confusion matrix and a UMAP of test-cell embeddings) and beside
marker genes (a dotplot).

Every figure of one model colours a label the same way: one category set (the model's labels, in its order) and
one palette (`label_palette`, scanpy's default for that many categories) serve the true and predicted UMAP panels
and the confusion matrix's tick labels, whether or not a label was ever predicted.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so importing or calling this module
never changes the global backend or figure state (inline plots in notebooks keep working).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from matplotlib.figure import Figure
from scanpy.plotting import palettes
from sklearn.metrics import ConfusionMatrixDisplay

from .outputs import DEFAULT_KEY, markers_key, scores_layer

UMAP_PANELS = ("true", "predicted")


def label_palette(names: Sequence[str]) -> dict[str, str]:
    """One colour per label, in label order: scanpy's default palette for that many categories (20, 28 or 102
    colours; grey beyond 102)."""
    count = len(names)
    palette = (
        palettes.default_20
        if count <= 20
        else palettes.default_28
        if count <= 28
        else palettes.default_102
        if count <= 102
        else ["grey"] * count
    )
    return {str(name): palette[index] for index, name in enumerate(names)}


def confusion_matrix_figure(labels: np.ndarray, predictions: np.ndarray, names: list[str]) -> Figure:
    """Row-normalised confusion matrix (each true class sums to 1), with every class on both axes and each tick
    label in its class's `label_palette` colour."""
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
    colours = label_palette(names)
    for tick in [*axis.get_xticklabels(), *axis.get_yticklabels()]:
        tick.set_color(colours[tick.get_text()])
    axis.set_title("Test cells: true vs predicted (row-normalised)")
    figure.tight_layout()
    return figure


def plot_confusion_matrix(labels: np.ndarray, predictions: np.ndarray, names: list[str], path: Path) -> None:
    confusion_matrix_figure(labels, predictions, names).savefig(path, dpi=120)


def umap_figure(
    embeddings: np.ndarray, names: list[str], labels: np.ndarray, predictions: np.ndarray
) -> Figure:
    """UMAP of cell embeddings coloured by true and by predicted cell type, both panels over all of `names`
    (the label indices of `labels` and `predictions`) with one palette."""
    categories = [str(name) for name in names]
    cells = ad.AnnData(obsm={"X_umap_input": np.asarray(embeddings, dtype=np.float32)})
    for column, indices in zip(UMAP_PANELS, (labels, predictions), strict=True):
        values = np.asarray(categories, dtype=object)[np.asarray(indices)]
        cells.obs[column] = pd.Categorical(values, categories=categories)
        cells.uns[f"{column}_colors"] = list(label_palette(categories).values())
    n_neighbors = min(15, max(2, cells.n_obs - 1))
    sc.pp.neighbors(cells, use_rep="X_umap_input", n_neighbors=n_neighbors, random_state=0)
    sc.tl.umap(cells, random_state=0)
    figure = Figure(figsize=(12, 5), layout="constrained")
    for axis, column in zip(figure.subplots(1, 2), UMAP_PANELS, strict=True):
        sc.pl.umap(cells, color=column, ax=axis, show=False)
    return figure


def plot_umap(
    embeddings: np.ndarray, names: list[str], labels: np.ndarray, predictions: np.ndarray, path: Path
) -> None:
    umap_figure(embeddings, names, labels, predictions).savefig(path, dpi=120, bbox_inches="tight")


def markers_figure(
    adata: ad.AnnData, label_key: str, n_genes: int = 5, key_added: str = DEFAULT_KEY
) -> Figure:
    """Dotplot (scanpy) of each group's top `n_genes` in `adata.uns[f"{key_added}_markers"]`: colour = mean
    attention score in the group, size = fraction of its cells in which the gene was scored."""
    names = adata.uns[markers_key(key_added)]["names"]
    genes = {group: [str(gene) for gene in names[group][:n_genes]] for group in names.dtype.names}
    width = 3 + 0.3 * sum(map(len, genes.values()))
    figure = Figure(figsize=(width, 2 + 0.35 * adata.obs[label_key].nunique()))
    plot = sc.pl.DotPlot(
        adata,
        genes,
        groupby=label_key,
        layer=scores_layer(key_added),
        ax=figure.add_subplot(),
        title="Attention marker genes",
    )
    plot.legend(colorbar_title="mean attention\nscore", size_title="fraction of cells\nscored")
    plot.make_figure()
    return figure


def plot_markers(
    adata: ad.AnnData, label_key: str, path, n_genes: int = 5, key_added: str = DEFAULT_KEY
) -> None:
    """Save :func:`markers_figure` as PNG to `path` (a file name or a binary file object)."""
    figure = markers_figure(adata, label_key, n_genes, key_added)
    figure.savefig(path, format="png", dpi=120, bbox_inches="tight")
