"""scGPT's per-cell encoding of one chunk of cells: value checks, counts → log1p, bins, `<cls>` + genes rows.

Used by :class:`~scpeft_hf.data.ScGPTProcessor`; the binning itself (and its tie rule) is in
:mod:`scpeft_hf.data.binning`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InvalidInputError
from .binning import bin_csr_counts, bin_csr_values
from .processing_utils import select_columns
from .streaming import iter_csr_chunks

logger = logging.getLogger(__name__)


@dataclass
class GenePlan:
    """Which columns feed the model, in column order, and their token ids."""

    matched_columns: np.ndarray  # columns with a token: normalisation totals run over these
    selected: np.ndarray  # boolean over matched_columns: fed to the model (all, or the HVGs)
    token_ids: np.ndarray  # token id of each selected gene
    hvg_genes: list[str] | None


def resolve_input_kind(stored: np.ndarray, where: str, input_kind: str) -> Literal["counts", "log1p"]:
    """Check the stored values are usable and resolve `input_kind` ("auto" → by integer-ness) for them."""
    # min/max propagate NaN, so two reductions screen for NaN, inf and negatives at once.
    if len(stored) and not (np.isfinite(stored.max()) and stored.min() >= 0):
        finite = np.isfinite(stored)
        problem = (
            f"{(~finite).sum()} NaN/inf values"
            if not finite.all()
            else f"negative values (min {stored.min():.3g})"
        )
        raise InvalidInputError(
            f"{where} has {problem}; scGPT bins non-negative expression: pass raw counts or log1p-normalised data "
            f"(not scaled or centred data such as the output of sc.pp.scale: if adata.raw holds the log1p values, "
            f"pass use_raw=True / --use-raw), and fill or drop non-finite entries"
        )
    is_integer = all(
        np.array_equal(block, np.rint(block))
        for block in np.split(stored, range(1 << 20, len(stored), 1 << 20))
    )
    if input_kind == "counts" and not is_integer:
        fractional = stored[stored != np.rint(stored)]
        hint = (
            "it looks log-normalised (all values below 30)"
            if stored.max() < 30
            else "it looks normalised (non-integer values)"
        )
        raise InvalidInputError(
            f"{where} holds non-integer values (e.g. {fractional[0]:.4g}) but input_kind='counts'; {hint}. "
            f"Pass input_kind='log1p' (--input log1p) for log-normalised data, or give the raw counts (layer='counts' "
            f"or use_raw=True)"
        )
    if input_kind == "log1p" and is_integer and len(stored):
        warnings.warn(
            f"{where} holds only integers but input_kind='log1p'; if these are raw counts, pass "
            f"input_kind='counts' so they are normalised and log1p'd first",
            stacklevel=4,
        )
    if input_kind != "auto":
        return input_kind
    return "counts" if is_integer else "log1p"


def count_transform(totals: np.ndarray, normalize_total: float | None, log1p: bool):
    """Counts → the values the official pipeline bins, in scanpy's float32 arithmetic: f(rows, counts)."""
    scale = totals.astype(np.float32) / np.float32(normalize_total) if normalize_total else None

    def transform(rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        values = counts.astype(np.float32)
        if scale is not None:
            values = values / scale[rows]
        return np.log1p(values) if log1p else values

    return transform


def normalised(counts: sp.csr_matrix, normalize_total: float | None, log1p: bool) -> sp.csr_matrix:
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    values = counts.copy()
    values.data = count_transform(row_totals(counts), normalize_total, log1p)(rows, counts.data)
    return values


def row_totals(counts: sp.csr_matrix) -> np.ndarray:
    """Per-row sums of counts, exact (scanpy accumulates in float64; float32 is exact below 2**24)."""
    totals = np.zeros(counts.shape[0])
    occupied = np.diff(counts.indptr) > 0
    if occupied.any():
        starts = counts.indptr[:-1][occupied]
        totals[occupied] = np.add.reduceat(counts.data, starts)
        if totals.max() >= 2**24:
            totals[occupied] = np.add.reduceat(counts.data, starts, dtype=np.float64)
    return totals


def choose_hvgs(processor, matrix, matched_columns: np.ndarray, names: np.ndarray) -> list[str]:
    import scanpy as sc

    values = sp.csr_matrix(matrix[:, matched_columns], dtype=np.float32)
    values.eliminate_zeros()
    if resolve_input_kind(values.data, "the AnnData's vocabulary genes", processor.input_kind) == "counts":
        values = normalised(values, processor.normalize_total, processor.log1p)
    hvg = sc.pp.highly_variable_genes(
        AnnData(values), n_top_genes=processor.n_top_genes, flavor="seurat", inplace=False
    )
    chosen = names[hvg["highly_variable"].to_numpy()].tolist()
    logger.info("chose %d highly variable genes of %d vocabulary genes", len(chosen), len(names))
    return chosen


def encode_chunks(
    processor,
    matrix,
    plan: GenePlan,
    labels: np.ndarray | None,
    label_names: list[str] | None,
    source: str,
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Check and tokenize `matrix` `processor.chunk_size` cells at a time: (record batch, cells without genes)."""
    random_state = np.random.RandomState(processor.seed)
    input_kind = None
    for start, chunk in iter_csr_chunks(matrix, processor.chunk_size):
        where = f"cells {start}..{start + chunk.shape[0] - 1} of {source}"
        chunk_kind = resolve_input_kind(chunk.data, where, processor.input_kind)
        if input_kind is not None and chunk_kind != input_kind:
            raise InvalidInputError(
                f"{where} look like {chunk_kind} but earlier cells like {input_kind}; "
                f"pass input_kind='counts' or 'log1p' to say which they hold"
            )
        if input_kind is None and processor.input_kind == "auto":
            logger.info("input_kind='auto': %s are treated as %s (integer-valued or not)", where, chunk_kind)
        input_kind = chunk_kind
        chunk_labels = labels[start : start + chunk.shape[0]] if labels is not None else None
        yield encode_chunk(processor, chunk, plan, input_kind, chunk_labels, label_names, random_state)


def encode_chunk(
    processor,
    chunk: sp.csr_matrix,
    plan: GenePlan,
    input_kind: str,
    labels: np.ndarray | None,
    label_names: list[str] | None,
    random_state: np.random.RandomState,
) -> tuple[pa.RecordBatch, int]:
    """One chunk of cells → (Arrow record batch of `processor.features`, number of cells without genes)."""
    n_cells = chunk.shape[0]
    matched = select_columns(chunk, plan.matched_columns, chunk.shape[1])
    # Totals over all vocabulary genes, before any HVG restriction, as the official tutorials normalise.
    totals = row_totals(matched) if input_kind == "counts" else None
    if not plan.selected.all():
        matched = select_columns(matched, np.flatnonzero(plan.selected), matched.shape[1])
    indptr, genes, stored = matched.indptr.astype(np.int64), matched.indices, matched.data
    if input_kind == "counts":
        transform = count_transform(totals, processor.normalize_total, processor.log1p)
        bins = bin_csr_counts(indptr, stored, processor.n_bins, transform, processor.ties, random_state)
    else:
        bins = bin_csr_values(indptr, stored, processor.n_bins, processor.ties, random_state)
    row_lengths = np.diff(indptr)
    n_empty = int((row_lengths == 0).sum())
    if processor.include_zero_genes:
        n_genes = len(plan.token_ids)
        dense = np.zeros((n_cells, n_genes), dtype=np.int16)
        dense[np.repeat(np.arange(n_cells), row_lengths), genes] = bins
        row_lengths = np.full(n_cells, n_genes, dtype=np.int64)
        token_ids = np.tile(plan.token_ids.astype(np.int32), n_cells)
        bins = dense.ravel()
    else:
        token_ids = plan.token_ids.astype(np.int32)[genes]
    lengths = row_lengths + 1
    offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise InvalidInputError(f"chunk of {n_cells} cells has {offsets[-1]} tokens; lower chunk_size")
    offsets = pa.array(offsets.astype(np.int32))
    gene_slots = np.ones(len(token_ids) + n_cells, dtype=bool)
    gene_slots[offsets.to_numpy()[:-1]] = False

    def with_cls(cls_entry: int, genes_entries: np.ndarray, dtype: type) -> pa.ListArray:
        tokens = np.full(len(gene_slots), cls_entry, dtype=dtype)
        tokens[gene_slots] = genes_entries
        return pa.ListArray.from_arrays(offsets, pa.array(tokens))

    arrays = [
        with_cls(processor.cls_token_id, token_ids, np.int32),
        with_cls(processor.cls_value, bins, np.int16),
        pa.array(lengths.astype(np.int32)),
    ]
    if labels is not None:
        arrays.append(pa.array(labels))
    return pa.RecordBatch.from_arrays(arrays, schema=processor.features(label_names).arrow_schema), n_empty
