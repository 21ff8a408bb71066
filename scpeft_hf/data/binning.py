"""Per-cell quantile binning of expression values (scGPT's value encoding), vectorised over CSR rows.

scGPT bins each cell's non-zero values into `n_bins - 1` quantile bins; zeros keep bin 0. The official
`scgpt.preprocess.binning` takes the edges `np.quantile(nonzero, np.linspace(0, 1, n_bins - 1))` and
`_digitize`s each value: with `hi` = number of edges <= value and `right` = number of edges < value, the bin
is `hi` when `hi - right <= 1`, and otherwise (a value equal to several edges: a tie) a bin drawn uniformly
from `right + 1 .. hi`, so the model's inputs change from run to run.

We compute the same `hi` and `right` for every cell of a chunk at once. A value's tie group (the sorted
positions `s..t` its equal values occupy in the cell) comes from one sort of (row, value) keys, or, for
integer counts, from a counting pass with no sort. The edges are rebuilt with NumPy's own "linear"
quantile arithmetic (virtual index `(n - 1) * q`, float64 interpolation between the two neighbouring order
statistics) and compared with those two neighbours only. Tie rules:

- ``ties="deterministic"`` (default): bin = ``(lo + hi + 1) // 2`` with ``lo = min(right + 1, hi)``, the
  middle of the official range rounded up, which is the expected bin of the official draw. A value that is
  not a tie gets exactly the official bin. Example (n_bins=51): a cell whose three non-zero values are all
  equal gives each of them bin 26, where the official code draws each from 1..50.
- ``ties="random"``: the official rule, `ceil(u * (right - hi) + hi)` with `u` uniform in [0, 1) drawn
  value by value (cell by cell, genes in order) from ``numpy.random.RandomState(seed)``. After ``np.random.seed(seed)`` the official
  per-cell loop draws the same numbers, so the bins are identical.

Values are compared at float32 precision (AnnData's usual dtype) through their IEEE-754 bit patterns, which
sort like the numbers for non-negative floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

TieRule = Literal["deterministic", "random"]

# Sort key layout (uint64): | row within chunk: 16 bits | float32 bits of the value: 31 | position in row: 17 |
# (the row part only when all rows are sorted as one array)
_VALUE_SHIFT = np.uint64(17)
_ROW_SHIFT = np.uint64(48)
MAX_CHUNK_ROWS = 1 << 16
MAX_ROW_LENGTH = 1 << 17


def bin_csr_values(
    indptr: np.ndarray,
    values: np.ndarray,
    n_bins: int,
    ties: TieRule = "deterministic",
    random_state: np.random.RandomState | None = None,
) -> np.ndarray:
    """Bin the stored values of a CSR matrix row by row; returns bins 1..n_bins-1 aligned with `values`.

    Bins are int16 (int32 when n_bins > 32767). `values` must hold only the positive, finite entries of
    each row (explicit zeros eliminated). A chunk may have at most 2**16 rows of at most 2**17 values (the
    sort key's layout); callers process large matrices in row chunks. `random_state` is required for
    ``ties="random"`` and advances by one draw per value, in storage order (gene order within a row, as the
    official code draws, for canonical CSR).
    """
    row_lengths = _check_chunk(indptr, n_bins, ties, random_state)
    n_values = len(values)
    if n_values == 0:
        return np.zeros(0, dtype=_bin_dtype(n_bins))
    row_start = np.asarray(indptr[:-1], dtype=np.int64)
    value_row_start = np.repeat(row_start, row_lengths)
    position = np.arange(n_values, dtype=np.int64) - value_row_start
    keys = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64) << _VALUE_SHIFT
    keys |= position.astype(np.uint64)
    width = int(row_lengths.max())
    if len(row_lengths) * width <= 3 * n_values:
        # Rows padded into a matrix: NumPy sorts each row on its own, in cache, much faster than one sort.
        real = np.arange(width) < row_lengths[:, None]
        padded = np.full((len(row_lengths), width), np.iinfo(np.uint64).max, dtype=np.uint64)
        padded[real] = keys
        padded.sort(axis=1)
        keys = padded[real]
    else:
        keys |= np.repeat(np.arange(len(row_lengths), dtype=np.uint64), row_lengths) << _ROW_SHIFT
        keys.sort()
        keys &= np.uint64((1 << int(_ROW_SHIFT)) - 1)
    # Rows keep their CSR place in either sort, so `value_row_start` also holds for sorted positions.
    value_bits = (keys >> _VALUE_SHIFT).astype(np.uint32)
    sorted_values = value_bits.view(np.float32)
    new_group = np.empty(n_values, dtype=bool)
    new_group[0] = True
    np.not_equal(value_bits[1:], value_bits[:-1], out=new_group[1:])
    new_group[row_start[row_lengths > 0]] = True
    group_first = np.flatnonzero(new_group)
    group_last = np.append(group_first[1:], n_values) - 1

    hi, right = _hi_and_right(
        group_first,
        group_last,
        value_row_start[group_first],
        sorted_values.__getitem__,
        row_start,
        row_lengths,
        n_bins,
    )
    group_of_value = np.empty(n_values, dtype=np.int32)
    group_of_value[value_row_start + (keys & np.uint64(MAX_ROW_LENGTH - 1)).astype(np.int64)] = (
        np.cumsum(new_group, dtype=np.int32) - 1
    )
    return _assign_bins(hi, right, None, len(group_first), group_of_value, n_bins, ties, random_state)


def bin_csr_counts(
    indptr: np.ndarray,
    counts: np.ndarray,
    n_bins: int,
    transform: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ties: TieRule = "deterministic",
    random_state: np.random.RandomState | None = None,
) -> np.ndarray:
    """Bin `transform(rows, counts)` of the positive integer counts of a CSR matrix, without sorting.

    `transform` maps (row index within the chunk, count) pairs to the float32 values the official code
    would bin (e.g. log1p of the count normalised by its cell's total) and must be increasing in the count
    for a fixed row; it is evaluated once per distinct (row, count). Ranks come from per-row histograms of
    the counts. If `transform` maps two different counts of one cell to the same float32 value (possible
    only for counts in the millions), the chunk falls back to :func:`bin_csr_values` on the transformed
    values, so the result always equals binning the transformed values.
    """
    row_lengths = _check_chunk(indptr, n_bins, ties, random_state)
    n_values = len(counts)
    if n_values == 0:
        return np.zeros(0, dtype=_bin_dtype(n_bins))
    n_rows = len(row_lengths)
    largest = int(counts.max())
    keys = counts.astype(np.int32 if largest < 2**31 else np.int64)
    # One histogram bucket per (row, count); with large counts, per (row, rank among the chunk's counts).
    if n_rows * (largest + 1) <= 2 * n_values:
        distinct_counts = np.arange(largest + 1)
        rank_of_count = None
    else:
        present = np.zeros(largest + 1, dtype=bool)
        present[keys] = True
        distinct_counts = np.flatnonzero(present)
        rank_of_count = np.cumsum(present) - 1
    n_distinct = len(distinct_counts)
    n_buckets = n_rows * n_distinct
    index_type = np.int32 if n_buckets < 2**31 else np.int64
    bucket = np.repeat(np.arange(n_rows, dtype=index_type) * n_distinct, row_lengths)
    bucket += keys if rank_of_count is None else rank_of_count.astype(index_type)[keys]
    histogram = np.bincount(bucket, minlength=n_buckets)
    filled = np.flatnonzero(histogram)
    values_through = np.cumsum(histogram[filled])
    filled_rows = filled // n_distinct
    filled_values = np.asarray(transform(filled_rows, distinct_counts[filled % n_distinct]), dtype=np.float32)
    same_row = filled_rows[1:] == filled_rows[:-1]
    if np.any(filled_values[1:][same_row] <= filled_values[:-1][same_row]):
        row_of_value = np.repeat(np.arange(n_rows), row_lengths)
        values = np.asarray(transform(row_of_value, keys), dtype=np.float32)
        return bin_csr_values(indptr, values, n_bins, ties, random_state)

    def sorted_value_at(positions: np.ndarray) -> np.ndarray:
        return filled_values[np.searchsorted(values_through, positions, side="right")]

    row_start = np.asarray(indptr[:-1], dtype=np.int64)
    group_last = values_through - 1
    hi, right = _hi_and_right(
        group_last - histogram[filled] + 1,
        group_last,
        row_start[filled_rows],
        sorted_value_at,
        row_start,
        row_lengths,
        n_bins,
    )
    return _assign_bins(hi, right, filled, n_buckets, bucket, n_bins, ties, random_state)


def _check_chunk(
    indptr: np.ndarray, n_bins: int, ties: str, random_state: np.random.RandomState | None
) -> np.ndarray:
    if n_bins < 3:
        raise ValueError(f"n_bins={n_bins} leaves no room for quantile bins; scGPT uses 51 (needs >= 3)")
    if ties not in ("deterministic", "random"):
        raise ValueError(f"ties={ties!r} is not a tie rule; use 'deterministic' or 'random'")
    if ties == "random" and random_state is None:
        raise ValueError("ties='random' needs random_state=numpy.random.RandomState(seed)")
    row_lengths = np.diff(indptr).astype(np.int64)
    if len(row_lengths) > MAX_CHUNK_ROWS or (len(row_lengths) and row_lengths.max() > MAX_ROW_LENGTH):
        raise ValueError(
            f"got {len(row_lengths)} rows of up to {row_lengths.max()} values; split the matrix into "
            f"chunks of at most {MAX_CHUNK_ROWS} rows with at most {MAX_ROW_LENGTH} values per row"
        )
    return row_lengths


def _hi_and_right(
    group_first: np.ndarray,
    group_last: np.ndarray,
    group_row_start: np.ndarray,
    sorted_value_at: Callable[[np.ndarray], np.ndarray],
    row_start: np.ndarray,
    row_lengths: np.ndarray,
    n_bins: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Edges <= and < the value of each tie group, given its first/last global sorted positions."""
    occupied = row_lengths > 0
    n = row_lengths[occupied][:, None]
    start = row_start[occupied][:, None]
    # Edge k of a row with n values sits between sorted positions j_k and j_k + 1, as in
    # np.quantile(..., method="linear"): j_k = floor((n - 1) q_k), clipped to n - 1.
    virtual = (n - 1) * np.linspace(0, 1, n_bins - 1)
    previous = np.floor(virtual)
    gamma = virtual - previous
    clipped = virtual >= n - 1
    previous = np.where(clipped, n - 1, previous.astype(np.int64))
    following = np.where(clipped, n - 1, previous + 1)
    low = sorted_value_at(start + previous)
    high = sorted_value_at(start + following)
    difference = high - low  # float32: NumPy subtracts the neighbours in the input dtype
    edges = low + difference * gamma
    upper_half = gamma >= 0.5
    edges[upper_half] = (high - difference * (1 - gamma))[upper_half]

    # Global positions of the edges' lower neighbours: ascending, as rows are in order and j_k grows with k.
    edge_position = (start + previous).ravel()
    equal_to_low = np.concatenate(([0], np.cumsum((edges == low).ravel())))
    below_high = np.concatenate(([0], np.cumsum((edges != high).ravel())))
    edges_before_row = np.searchsorted(edge_position, group_row_start)

    # Edges sitting before the group's last position are <= the value; one sitting at that position only
    # when it equals the value.
    first_at_last = np.searchsorted(edge_position, group_last)
    after_last = np.searchsorted(edge_position, group_last, side="right")
    hi = first_at_last - edges_before_row + equal_to_low[after_last] - equal_to_low[first_at_last]
    # Edges before the position preceding the group are < the value; one at that position only when it
    # stays below the value. Nothing precedes a group that starts its row.
    preceding = group_first - 1
    first_at_preceding = np.searchsorted(edge_position, preceding)
    after_preceding = np.searchsorted(edge_position, preceding, side="right")
    right = (
        first_at_preceding - edges_before_row + below_high[after_preceding] - below_high[first_at_preceding]
    )
    right[group_first == group_row_start] = 0
    return hi, right


def _assign_bins(
    hi: np.ndarray,
    right: np.ndarray,
    slots: np.ndarray | None,
    n_slots: int,
    slot_of_value: np.ndarray,
    n_bins: int,
    ties: TieRule,
    random_state: np.random.RandomState | None,
) -> np.ndarray:
    """Per-value bins from per-group `hi`/`right`, placed at `slots` (None: in order) of a table of `n_slots`
    entries that `slot_of_value` indexes: one small table and one gather per value."""
    bin_type = _bin_dtype(n_bins)
    where = slots if slots is not None else slice(None)
    if ties == "deterministic":
        table = np.zeros(n_slots, dtype=bin_type)
        table[where] = (np.minimum(right + 1, hi) + hi + 1) // 2
        return table[slot_of_value]
    hi_table, right_table = np.zeros(n_slots, dtype=bin_type), np.zeros(n_slots, dtype=bin_type)
    hi_table[where], right_table[where] = hi, right
    value_hi = hi_table[slot_of_value].astype(np.int64)
    # The official `_digitize` arithmetic, in float64, so equal draws give equal bins.
    draws = random_state.random_sample(len(slot_of_value))
    return np.ceil(draws * (right_table[slot_of_value] - value_hi) + value_hi).astype(bin_type)


def _bin_dtype(n_bins: int) -> type:
    return np.int16 if n_bins <= np.iinfo(np.int16).max else np.int32
