"""The logistic-regression baseline that sits beside every annotation result: fitted on the same training split
and scored on the same test split as the model, from expression alone.

Input: `log1p(normalize_total(counts, 1e4))` of all the data's genes (or of the top 2,000 highly variable genes of
the training split), standardised without centring (`with_mean=False`, so sparse data stay sparse) with the
training split's scale. Model: `LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced")`, balanced
on the training split, which is the only data it is fitted on.
"""

from __future__ import annotations

import logging
import threading
import time

import anndata as ad
import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ..errors import InvalidInputError
from .metrics import classification_metrics

logger = logging.getLogger(__name__)

BASELINE_METHOD = "logistic_regression"
FEATURE_SETS = ("all", "hvg")
TARGET_SUM = 1e4
N_TOP_GENES = 2000
C = 1.0
MAX_ITER = 1000
DEFAULT_TIME_LIMIT = 600.0


def log_normalised_expression(adata: ad.AnnData, input_kind: str | None = "auto") -> sp.csr_matrix:
    """`log1p(normalize_total(X, 1e4))` as CSR float64; `X` already log-normalised (`input_kind="log1p"`, or
    non-integer values under `"auto"`) is used as it is."""
    matrix = sp.csr_matrix(adata.X, dtype=np.float64, copy=True)
    if input_kind in (None, "auto"):
        input_kind = "counts" if np.all(np.mod(matrix.data, 1) == 0) else "log1p"
    if input_kind == "log1p":
        return matrix
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    matrix = sp.csr_matrix(sp.diags(scale) @ matrix)
    np.log1p(matrix.data, out=matrix.data)
    return matrix


def feature_columns(
    expression: sp.csr_matrix, train_index: np.ndarray, features: str = "all"
) -> tuple[np.ndarray, str]:
    """The gene columns the baseline uses, chosen from the training cells only, and a one-line description."""
    if features not in FEATURE_SETS:
        raise InvalidInputError(f"Baseline features {features!r}; choose one of {', '.join(FEATURE_SETS)}")
    description = f"log1p(normalize_total {TARGET_SUM:g})"
    if features == "all" or expression.shape[1] <= N_TOP_GENES:
        columns = np.arange(expression.shape[1])
        return columns, f"{description} of all {len(columns)} genes, standardised (with_mean=False)"
    import scanpy as sc

    hvg = sc.pp.highly_variable_genes(
        ad.AnnData(expression[train_index]), n_top_genes=N_TOP_GENES, inplace=False
    )
    columns = np.flatnonzero(hvg["highly_variable"].to_numpy())
    return columns, (
        f"{description} of the top {len(columns)} highly variable genes of the training split (scanpy 'seurat'), "
        "standardised (with_mean=False)"
    )


def logistic_regression_baseline(
    adata: ad.AnnData,
    label_key: str,
    train_index: np.ndarray,
    test_index: np.ndarray,
    features: str = "all",
    input_kind: str | None = "auto",
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> dict:
    """Fit on `train_index`, score on `test_index`; the `baseline` block of `metrics.json`.

    When the fit takes longer than `time_limit` seconds the block says so instead of holding numbers (the fit
    is left to finish in a background thread, bounded by `max_iter`, and its result discarded).
    """
    labels = adata.obs[label_key].astype(str).to_numpy()
    expression = log_normalised_expression(adata, input_kind)
    columns, description = feature_columns(expression, train_index, features)
    expression = expression[:, columns]
    scaler = StandardScaler(with_mean=False).fit(expression[train_index])
    train_x, test_x = scaler.transform(expression[train_index]), scaler.transform(expression[test_index])
    classifier = LogisticRegression(C=C, max_iter=MAX_ITER, class_weight="balanced")
    block = {"method": BASELINE_METHOD, "features": description, "C": C, "max_iter": MAX_ITER,
             "class_weight": "balanced on the training split"}  # fmt: skip
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["model"] = classifier.fit(train_x, labels[train_index])
        except Exception as err:  # re-raised in the caller's thread
            outcome["error"] = err

    started = time.perf_counter()
    worker = threading.Thread(target=fit, name="logistic-regression-baseline", daemon=True)
    worker.start()
    worker.join(time_limit)
    seconds = time.perf_counter() - started
    if worker.is_alive():
        logger.warning(
            "The logistic-regression baseline did not finish within %g s; reported as timed out", time_limit
        )
        return block | {"status": f"timed out after {time_limit:g} s", "train_seconds": seconds}
    if "error" in outcome:
        raise outcome["error"]
    metrics = classification_metrics(labels[test_index], classifier.predict(test_x))
    return (
        block
        | {f"test_{name}": value for name, value in metrics.items()}
        | {
            "n_iter": int(classifier.n_iter_.max()),
            "trainable_params": int(classifier.coef_.size + classifier.intercept_.size),
            "train_seconds": seconds,
        }
    )
