"""Geneformer's rank-value encoding of CSR rows: values `count / n_counts * target_sum / median`, genes sorted
highest first (ties by ascending token id), truncated, wrapped in `<cls>` … `<eos>` for V2 models.

Used by :class:`~scpeft_hf.data.GeneformerProcessor`, as :mod:`scpeft_hf.data.binning` is by the scGPT one.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InvalidInputError


def rank_value_order(
    indptr: np.ndarray,
    token_ids: np.ndarray,
    counts: np.ndarray,
    n_counts: np.ndarray,
    medians: np.ndarray,
    target_sum: float = 10_000,
) -> np.ndarray:
    """Token ids of CSR rows (entries `token_ids`/`counts`, row bounds `indptr`) in rank-value order.

    Each entry's value is `count / n_counts[row] * target_sum / median`; within a row entries are sorted by
    value, highest first, ties by ascending token id. Returns the token ids in that order (row lengths kept).
    """
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    values = counts.astype(np.float64) / n_counts[rows] * target_sum / medians
    order = np.lexsort((token_ids, -values, rows))
    return token_ids[order]


def truncate(tokens: np.ndarray, lengths: np.ndarray, max_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first `max_genes` tokens of each row."""
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = np.arange(len(tokens)) - starts < max_genes
    return tokens[keep], np.minimum(lengths, max_genes)


def wrap(tokens: np.ndarray, lengths: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Put `first` before and `last` after each row."""
    new_lengths = lengths + 2
    out = np.empty(int(new_lengths.sum()), dtype=np.int64)
    ends = np.cumsum(new_lengths)
    starts = ends - new_lengths
    inner = np.ones(len(out), dtype=bool)
    inner[starts] = inner[ends - 1] = False
    out[starts], out[ends - 1], out[inner] = first, last, tokens
    return out, new_lengths


def cell_totals(adata: AnnData, matrix: sp.csr_matrix) -> np.ndarray:
    """Total counts per cell: `obs["n_counts"]` when present (as Geneformer), else the sum over all genes."""
    if "n_counts" in adata.obs.columns:
        n_counts = adata.obs["n_counts"].to_numpy(dtype=np.float64)
        if not np.isfinite(n_counts).all() or (n_counts < 0).any():
            raise InvalidInputError(
                'obs["n_counts"] has negative or non-finite totals; fix or delete the column'
            )
        return n_counts
    return np.asarray(matrix.sum(axis=1, dtype=np.float64)).ravel()


def check_counts(stored: np.ndarray, where: str) -> None:
    if not len(stored):
        return
    if not (np.isfinite(stored.max()) and stored.min() >= 0):
        raise InvalidInputError(f"{where} have negative or non-finite values; Geneformer ranks raw counts")
    if not np.array_equal(stored, np.rint(stored)):
        raise InvalidInputError(
            f"{where} hold non-integer values (e.g. {stored[stored != np.rint(stored)][0]:.4g}); Geneformer ranks "
            f"raw counts: give them (layer='counts' or adata.raw.to_adata())"
        )
