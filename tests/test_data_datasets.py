"""The offline PBMC dataset: counts recovered from scanpy's bundled log-normalised file."""

import numpy as np
import scanpy as sc
import scipy.sparse as sp

from scpeft_hf.datasets import pbmc68k_reduced


def test_pbmc68k_counts_are_integers_that_reproduce_the_shipped_log_data():
    adata = pbmc68k_reduced()

    assert adata.shape == (700, 765)
    assert sp.isspmatrix_csr(adata.X) and adata.X.has_canonical_format
    assert np.all(adata.X.data == np.round(adata.X.data)) and adata.X.data.min() >= 1
    assert adata.obs["bulk_labels"].nunique() == 10
    assert adata.var_names[:3].tolist() == ["HES4", "TNFRSF4", "SSU72"]
    # Normalising by the file's n_counts and log1p'ing gives back raw.X (stored as float32).
    shipped = sc.datasets.pbmc68k_reduced().raw.X.toarray()
    renormalised = np.log1p(adata.X.toarray() / adata.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(renormalised, shipped, atol=1e-3)
    assert int(adata.X.sum()) == 486_651
