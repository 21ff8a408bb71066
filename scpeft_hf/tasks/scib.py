"""scIB integration metrics of cell embeddings, computed with scverse's `scib-metrics` (the `integration` extra).

Individual metrics: NMI and ARI (Leiden clusters vs labels, resolution optimised), ASW cell type, ASW batch,
graph connectivity, iLISI and cLISI. Aggregates as scGPT and scPEFT report them (DESIGN.md §7):
avg_bio = mean(NMI, ARI, ASW_label), avg_batch = mean(ASW_batch, graph_conn), overall = 0.6 avg_bio + 0.4 avg_batch.
Values are not comparable with the older `scib` package's. The baselines beside every embedding: PCA of the
log-normalised highly variable genes, and Harmony on it when `harmonypy` is installed.
"""

from __future__ import annotations

import importlib.metadata

import anndata as ad
import numpy as np
from sklearn.neighbors import NearestNeighbors

from ..errors import MissingDependencyError

EXTRA = "integration"
INSTALL_HINT = f'pip install "scpeft-hf[{EXTRA}]"'
BIO_NEIGHBOURS, LISI_NEIGHBOURS = 15, 90  # as scib-metrics' Benchmarker


def require_scib_metrics():
    """The `scib_metrics` module, or a one-line error naming the extra that installs it."""
    try:
        import scib_metrics
    except ImportError as err:
        raise MissingDependencyError(
            f"integration metrics need scib-metrics, which is not installed: {INSTALL_HINT}"
        ) from err
    return scib_metrics


def scib_metrics_version() -> str:
    return importlib.metadata.version("scib-metrics")


def _neighbours(embedding: np.ndarray, n_neighbors: int):
    from scib_metrics.nearest_neighbors import NeighborsResults

    n_neighbors = min(n_neighbors, embedding.shape[0] - 1)
    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(embedding).kneighbors(embedding)
    return NeighborsResults(indices=indices, distances=distances)


def integration_metrics(
    embedding: np.ndarray, batches: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """scIB metrics of one embedding.

    Cells whose label is missing (None/NaN) are left out of every metric that reads labels. Without `labels`
    only the batch metrics are computed, with all cells as one group (ASW batch and graph connectivity are
    otherwise computed within each cell type), and there is no avg_bio or overall.
    """
    scib = require_scib_metrics()
    embedding = np.asarray(embedding, dtype=np.float32)
    batches = np.asarray(batches).astype(str)
    metrics: dict[str, float] = {}
    metrics["ilisi"] = float(scib.ilisi_knn(_neighbours(embedding, LISI_NEIGHBOURS), batches))
    if labels is None:
        one_group = np.zeros(len(batches), dtype=int)
        metrics["asw_batch"] = float(scib.silhouette_batch(embedding, one_group, batches))
        metrics["graph_conn"] = float(
            scib.graph_connectivity(_neighbours(embedding, BIO_NEIGHBOURS), one_group)
        )
        metrics["avg_batch"] = float(np.mean([metrics["asw_batch"], metrics["graph_conn"]]))
        return metrics
    labels = np.asarray(labels, dtype=object)
    labelled = np.array([value is not None and value == value for value in labels])  # NaN != NaN
    x, y, b = embedding[labelled], labels[labelled].astype(str), batches[labelled]
    bio = _neighbours(x, BIO_NEIGHBOURS)
    metrics.update({k: float(v) for k, v in scib.nmi_ari_cluster_labels_leiden(bio, y).items()})
    metrics["asw_label"] = float(scib.silhouette_label(x, y))
    metrics["asw_batch"] = float(scib.silhouette_batch(x, y, b))
    metrics["graph_conn"] = float(scib.graph_connectivity(bio, y))
    metrics["clisi"] = float(scib.clisi_knn(_neighbours(x, LISI_NEIGHBOURS), y))
    metrics["avg_bio"] = float(np.mean([metrics["nmi"], metrics["ari"], metrics["asw_label"]]))
    metrics["avg_batch"] = float(np.mean([metrics["asw_batch"], metrics["graph_conn"]]))
    metrics["overall"] = 0.6 * metrics["avg_bio"] + 0.4 * metrics["avg_batch"]
    return metrics


def pca_embedding(adata: ad.AnnData, hvg_genes: list[str], n_comps: int = 50) -> np.ndarray:
    """50 PCs of log-normalised expression of the highly variable genes (the baseline)."""
    import scanpy as sc

    cells = ad.AnnData(adata.X.astype(np.float32), obs=adata.obs[[]].copy())
    cells.var_names = adata.var_names.astype(str)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    cells = cells[:, hvg_genes].copy()
    sc.pp.pca(cells, n_comps=min(n_comps, cells.n_vars - 1, cells.n_obs - 1), random_state=0)
    return cells.obsm["X_pca"]


def harmony_embedding(pca: np.ndarray, adata: ad.AnnData, batch_key: str) -> np.ndarray | None:
    """Harmony on the PCA baseline, when `harmonypy` is installed (else None)."""
    try:
        import harmonypy
    except ImportError:
        return None
    result = harmonypy.run_harmony(pca, adata.obs, batch_key, random_state=0, verbose=False)
    corrected = np.asarray(result.Z_corr)
    return corrected.T if corrected.shape[0] != pca.shape[0] else corrected
