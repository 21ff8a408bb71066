"""Small real datasets shipped inside installed packages, for tests, tutorials and the demo (no downloads)."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata
import numpy as np
import scipy.sparse as sp

from .errors import InvalidInputError, MissingFileError

PBMC68K_FILE = "10x_pbmc68k_reduced.h5ad"


def pbmc68k_reduced() -> anndata.AnnData:
    """scanpy's bundled 700 PBMCs with exact integer UMI counts recovered, and their 10 `bulk_labels`.

    The file ships with scanpy (`scanpy/datasets/10x_pbmc68k_reduced.h5ad`); its `raw.X` holds
    `log1p(counts / n_counts * 1e4)` for 765 genes. Counts come back as `round(expm1(raw.X) * n_counts / 1e4)`
    (CSR, float32, in `.X`); genes are the raw gene symbols (var index), and `obs` keeps the file's columns
    (`bulk_labels`, `louvain`, `n_counts`, ...). Raises if the recovered values are not integers.
    """
    import scanpy

    path = Path(scanpy.__file__).parent / "datasets" / PBMC68K_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; reinstall scanpy (the file ships inside its wheel)")
    with warnings.catch_warnings():
        # The file predates `obsp` and anndata's encoding metadata; anndata says so while reading it.
        warnings.filterwarnings("ignore", message="Moving element from .uns", category=FutureWarning)
        warnings.filterwarnings("ignore", category=anndata.OldFormatWarning)
        source = anndata.read_h5ad(path)
    log_normalised = sp.csr_matrix(source.raw.X, dtype=np.float64)
    totals = source.obs["n_counts"].to_numpy(dtype=np.float64)
    rows = np.repeat(np.arange(source.n_obs), np.diff(log_normalised.indptr))
    unrounded = np.expm1(log_normalised.data) * totals[rows] / 1e4
    near_integer = np.abs(unrounded - np.round(unrounded)) <= 0.05
    if near_integer.mean() < 0.9999:
        raise InvalidInputError(
            f"{path}: only {100 * near_integer.mean():.3f}% of expm1(raw.X) * n_counts / 1e4 lie within 0.05 of "
            f"an integer (99.99% expected), so counts cannot be recovered; the file differs from scanpy's"
        )
    counts = sp.csr_matrix(
        (np.round(unrounded).astype(np.float32), log_normalised.indices, log_normalised.indptr),
        shape=log_normalised.shape,
    )
    counts.eliminate_zeros()
    counts.sort_indices()  # the file stores each row's genes in descending order
    return anndata.AnnData(X=counts, obs=source.obs.copy(), var=source.raw.var.copy())
