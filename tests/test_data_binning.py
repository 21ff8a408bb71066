"""Per-cell quantile binning against the official `scgpt.preprocess.binning` (scgpt 0.2.4)."""

import numpy as np
import pytest
import scipy.sparse as sp

from scpeft_hf.data import bin_csr_counts, bin_csr_values
from tests.data_helpers import official_scgpt, pbmc


def _log_normalised(counts: sp.csr_matrix) -> sp.csr_matrix:
    """scanpy's normalize_total(1e4) + log1p arithmetic on float32 CSR counts."""
    totals = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel() / np.float32(1e4)
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    values = counts.copy()
    values.data = np.log1p(counts.data / totals[rows])
    return values


def _official_bins(official, dense: np.ndarray, n_bins: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    return np.stack([official.preprocess.binning(row, n_bins) for row in dense])


def _log1p_transform(counts: sp.csr_matrix):
    scale = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel() / np.float32(1e4)
    return lambda rows, values: np.log1p(values.astype(np.float32) / scale[rows])


@pytest.mark.parametrize("n_bins", [51, 101, 11])
def test_random_ties_equal_official_bins_with_the_same_seed(monkeypatch, n_bins):
    official = official_scgpt(monkeypatch)
    counts = pbmc().X[:200]
    values = _log_normalised(counts)
    expected = _official_bins(official, values.toarray(), n_bins, seed=7)[values.nonzero()]

    by_sorting = bin_csr_values(values.indptr, values.data, n_bins, "random", np.random.RandomState(7))
    by_counting = bin_csr_counts(
        counts.indptr, counts.data, n_bins, _log1p_transform(counts), "random", np.random.RandomState(7)
    )

    np.testing.assert_array_equal(by_sorting, expected)
    np.testing.assert_array_equal(by_counting, expected)
    # The PBMC counts are full of ties, so another seed changes the official bins: the match is not luck.
    assert (
        _official_bins(official, values.toarray(), n_bins, seed=8)[values.nonzero()] != expected
    ).mean() > 0.1


@pytest.mark.parametrize("n_bins", [51, 101])
def test_deterministic_bins_equal_official_bins_on_tie_free_cells(monkeypatch, n_bins):
    official = official_scgpt(monkeypatch)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 400, size=60)
    dense = np.zeros((60, 400), dtype=np.float32)
    for row, length in enumerate(lengths):
        dense[row, rng.choice(400, length, replace=False)] = rng.permutation(length) + rng.random(length)
    values = sp.csr_matrix(dense)

    ours = bin_csr_values(values.indptr, values.data, n_bins)

    np.testing.assert_array_equal(ours, _official_bins(official, dense, n_bins, seed=0)[values.nonzero()])
    assert ours.min() == 1 and ours.max() == n_bins - 1


def _bins_of(cell: list[float], n_bins: int, ties: str = "deterministic", seed: int = 0) -> list[int]:
    random_state = np.random.RandomState(seed) if ties == "random" else None
    return bin_csr_values(
        np.array([0, len(cell)]), np.array(cell, np.float32), n_bins, ties, random_state
    ).tolist()


def test_deterministic_rule_takes_the_middle_of_the_official_tie_range(monkeypatch):
    """We differ from the official code on ties on purpose: the middle bin instead of a random one."""
    official = official_scgpt(monkeypatch)
    # n_bins=6: edges at the 0, 25, 50, 75, 100% quantiles of [1, 2, 2, 2, 3] are [1, 2, 2, 2, 3]. The 2s are
    # >= 4 edges and > 1 edge: the official code draws them from bins 2..4; we take (2 + 4 + 1) // 2 = 3.
    assert _bins_of([1, 2, 2, 2, 3], n_bins=6) == [1, 3, 3, 3, 5]
    # n_bins=5, [1, 1, 1, 2]: edges [1, 1, 1, 2]; the 1s range over bins 1..3 → 2.
    assert _bins_of([1, 1, 1, 2], n_bins=5) == [2, 2, 2, 4]
    # A lone value, or all values equal, equals every edge: official range 1..50 → 26.
    assert _bins_of([4.2], n_bins=51) == [26]
    assert _bins_of([3, 3, 3], n_bins=51) == [26, 26, 26]

    official_draws = {
        int(official.preprocess.binning(np.array([1, 2, 2, 2, 3], np.float32), 6)[2]) for _ in range(200)
    }
    assert official_draws == {2, 3, 4}
    for seed in range(5):
        np.random.seed(seed)
        expected = official.preprocess.binning(np.array([0, 1, 2, 2, 0, 2, 3], np.float32), 6)
        assert _bins_of([1, 2, 2, 2, 3], 6, "random", seed) == expected[expected > 0].tolist()


@pytest.mark.parametrize("ties", ["deterministic", "random"])
def test_counting_path_equals_sorting_path(ties):
    rng = np.random.default_rng(1)
    counts = sp.random(300, 2000, density=0.05, format="csr", random_state=2, dtype=np.float32)
    counts.data = rng.negative_binomial(1, 0.002, counts.nnz).astype(np.float32) + 1  # counts up to ~5000
    transform = _log1p_transform(counts)
    values = counts.copy()
    values.data = transform(np.repeat(np.arange(300), np.diff(counts.indptr)), counts.data)

    by_counting = bin_csr_counts(counts.indptr, counts.data, 51, transform, ties, np.random.RandomState(3))
    by_sorting = bin_csr_values(values.indptr, values.data, 51, ties, np.random.RandomState(3))

    np.testing.assert_array_equal(by_counting, by_sorting)


def test_counting_path_falls_back_when_the_transform_merges_counts():
    counts = sp.csr_matrix(np.array([[1, 2, 3, 4, 5, 6], [3, 0, 9, 2, 0, 7]], dtype=np.float32))
    merge_pairs = lambda rows, values: np.floor(values / 2).astype(np.float32) + 1  # noqa: E731

    ours = bin_csr_counts(counts.indptr, counts.data, 7, merge_pairs)

    merged = merge_pairs(None, counts.data)
    np.testing.assert_array_equal(ours, bin_csr_values(counts.indptr, merged, 7))
    assert ours[1] == ours[2]  # counts 2 and 3 became one tie group


def test_invalid_settings_are_rejected():
    indptr, values = np.array([0, 2]), np.array([1.0, 2.0], np.float32)
    with pytest.raises(ValueError, match="n_bins=2"):
        bin_csr_values(indptr, values, 2)
    with pytest.raises(ValueError, match="random_state"):
        bin_csr_values(indptr, values, 51, "random")
    with pytest.raises(ValueError, match="'sometimes'"):
        bin_csr_values(indptr, values, 51, "sometimes")


@pytest.mark.parametrize("ties", ["deterministic", "random"])
def test_uneven_rows_bin_like_rows_binned_one_by_one(ties):
    """A chunk with one long row and many short ones is sorted as one array rather than as padded rows."""
    rng = np.random.default_rng(4)
    lengths = np.array([3000] + [3] * 200)
    values = rng.integers(1, 40, lengths.sum()).astype(np.float32)
    indptr = np.concatenate(([0], np.cumsum(lengths)))

    together = bin_csr_values(indptr, values, 51, ties, np.random.RandomState(0))

    random_state = np.random.RandomState(0)
    one_by_one = [
        bin_csr_values(np.array([0, stop - start]), values[start:stop], 51, ties, random_state)
        for start, stop in zip(indptr[:-1], indptr[1:], strict=True)
    ]
    np.testing.assert_array_equal(together, np.concatenate(one_by_one))
