"""Genes ranked per group of cells from any cells x genes score matrix, stored as scanpy's `rank_genes_groups` stores
its results (so `sc.get.rank_genes_groups_df` and `sc.pl.rank_genes_groups_*` read them), with a Mann-Whitney U
p-value per gene and Benjamini-Hochberg correction per group."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from ..errors import InvalidInputError, MissingKeyError

MIN_CELLS = 3
MARKER_COLUMNS = ["group", "rank", "gene", "score", "pvalue", "pvalue_adj"]


def group_labels(adata: ad.AnnData, groupby: str) -> pd.Series:
    """`adata.obs[groupby]` as strings, refusing a missing column or missing labels."""
    if groupby not in adata.obs:
        raise MissingKeyError(
            f"Label column '{groupby}' is not in adata.obs; available columns: {', '.join(map(str, adata.obs))}"
        )
    labels = adata.obs[groupby]
    if labels.isna().any():
        raise InvalidInputError(
            f"Label column '{groupby}' has {int(labels.isna().sum())} cells without a label; drop them first"
        )
    return labels.astype(str)


def split_groups(
    labels: pd.Series, reference: str = "rest", min_cells: int = MIN_CELLS
) -> tuple[list[str], dict[str, int]]:
    """(groups to rank, {skipped group: its cell count}) for `labels`; the reference itself is not ranked."""
    counts = labels.value_counts()
    names = sorted(counts.index)
    if reference != "rest":
        if reference not in counts:
            raise InvalidInputError(
                f"--reference {reference!r} is not a group of this label column; use 'rest' or one of: "
                f"{', '.join(names)}"
            )
        if counts[reference] < min_cells:
            raise InvalidInputError(
                f"--reference {reference!r} has {counts[reference]} cells, fewer than {min_cells}; use 'rest' or "
                "a larger group"
            )
    skipped = {name: int(counts[name]) for name in names if counts[name] < min_cells and name != reference}
    groups = [name for name in names if name not in skipped and name != reference]
    if not groups:
        raise InvalidInputError(
            f"No group has at least {min_cells} cells besides the reference (counts: {counts.to_dict()})"
        )
    return groups, skipped


def rank_genes_by_score(
    adata: ad.AnnData,
    groupby: str,
    layer: str,
    *,
    reference: str = "rest",
    genes: np.ndarray | None = None,
    min_cells: int = MIN_CELLS,
    key_added: str = "scpeft_markers",
) -> dict[str, int]:
    """Rank genes per group of `adata.obs[groupby]` by the mean of `adata.layers[layer]` in the group minus its mean
    in the reference (`"rest"` or a named group); absent entries count as 0.

    Writes `adata.uns[key_added]` in `rank_genes_groups`' structure: `names`, `scores` (the difference of means),
    `logfoldchanges` (log2 of the ratio of means), `pvals` (two-sided Mann-Whitney U, asymptotic, tie-corrected),
    `pvals_adj` (Benjamini-Hochberg within each group) and `params`. `genes` is a boolean mask over `var` (default:
    genes with a score in at least one cell). Groups with fewer than `min_cells` cells are skipped and returned.
    """
    if layer not in adata.layers:
        raise MissingKeyError(f"adata.layers has no '{layer}'; compute gene scores first")
    labels = group_labels(adata, groupby)
    groups, skipped = split_groups(labels, reference, min_cells)
    scores = sp.csc_matrix(adata.layers[layer], dtype=np.float64)
    if genes is None:
        genes = np.diff(scores.indptr) > 0
    columns = np.flatnonzero(genes)
    if len(columns) == 0:
        raise InvalidInputError(f"adata.layers['{layer}'] scores no gene in any cell")
    dense = scores[:, columns].toarray()
    names = adata.var_names.to_numpy()[columns]
    fields = {key: [] for key in ("names", "scores", "logfoldchanges", "pvals", "pvals_adj")}
    for group in groups:
        in_group = (labels == group).to_numpy()
        in_reference = ~in_group if reference == "rest" else (labels == reference).to_numpy()
        group_values, reference_values = dense[in_group], dense[in_reference]
        mean_group, mean_reference = group_values.mean(0), reference_values.mean(0)
        difference = mean_group - mean_reference
        with np.errstate(invalid="ignore", divide="ignore"):
            pvalues = stats.mannwhitneyu(group_values, reference_values, axis=0, method="asymptotic").pvalue
        pvalues = np.nan_to_num(pvalues, nan=1.0)  # a gene equal in every cell of both sets
        order = np.argsort(-difference, kind="stable")
        fields["names"].append(names[order])
        fields["scores"].append(difference[order].astype(np.float32))
        fields["logfoldchanges"].append(np.log2((mean_group[order] + 1e-9) / (mean_reference[order] + 1e-9)))
        fields["pvals"].append(pvalues[order])
        fields["pvals_adj"].append(stats.false_discovery_control(pvalues)[order])
    result = {
        key: np.rec.fromarrays(values, names=groups) for key, values in fields.items()
    }  # one field per group, as scanpy stores them
    result["params"] = {
        "groupby": groupby,
        "reference": reference,
        "method": "difference of mean scores, Mann-Whitney U",
        "use_raw": False,
        "layer": layer,
        "corr_method": "benjamini-hochberg",
        "min_cells": min_cells,
        "skipped_groups": skipped,
    }
    adata.uns[key_added] = result
    return skipped


def marker_genes_df(
    adata: ad.AnnData, key: str = "scpeft_markers", group: str | None = None, top: int | None = None
) -> pd.DataFrame:
    """The ranking in `adata.uns[key]` as one table: group, rank (1 = top), gene, score, pvalue, pvalue_adj."""
    if key not in adata.uns:
        raise MissingKeyError(f"adata.uns has no '{key}'; rank marker genes first")
    result = adata.uns[key]
    groups = list(result["names"].dtype.names) if group is None else [group]
    frames = []
    for name in groups:
        n = len(result["names"][name]) if top is None else min(top, len(result["names"][name]))
        frames.append(
            pd.DataFrame(
                {
                    "group": name,
                    "rank": np.arange(1, n + 1),
                    "gene": np.asarray(result["names"][name][:n], dtype=str),
                    "score": result["scores"][name][:n],
                    "pvalue": result["pvals"][name][:n],
                    "pvalue_adj": result["pvals_adj"][name][:n],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[MARKER_COLUMNS]


def wilcoxon_top_genes(
    log_normalised: ad.AnnData, groupby: str, groups: list[str], reference: str, top: int
) -> dict[str, list[str]]:
    """scanpy's Wilcoxon `rank_genes_groups` top `top` genes per group, on log-normalised values in `.X`."""
    import scanpy as sc

    sc.tl.rank_genes_groups(
        log_normalised,
        groupby,
        groups=groups,
        reference=reference,
        method="wilcoxon",
        use_raw=False,
        n_genes=top,
        key_added="wilcoxon",
    )
    names = log_normalised.uns["wilcoxon"]["names"]
    return {group: [str(gene) for gene in names[group][:top]] for group in groups}
