"""`scpeft-hf demo`: annotate bundled PBMCs offline with an encoder adapter, compared with a linear probe,
full fine-tuning and a logistic-regression baseline on the same split."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.linear_model import LogisticRegression

from ..output_folders import check_out_dir, make_staging_dir, publish
from .annotation import TrainingSettings, train_annotation
from .card import render_adapter_card
from .metrics import classification_metrics
from .pretrain import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data

# Epoch budgets per method (early stopping on validation macro-F1 may end sooner).
DEMO_EPOCHS = {"encoder": 20, "probe": 20, "full": 15}


def logistic_regression_baseline(adata: ad.AnnData, seed: int = 0) -> dict[str, float]:
    """Logistic regression on log-normalised expression, trained on train+validation, scored on test."""
    normalised = adata.copy()
    sc.pp.normalize_total(normalised, target_sum=1e4)
    sc.pp.log1p(normalised)
    features = normalised.X.toarray() if hasattr(normalised.X, "toarray") else np.asarray(normalised.X)
    is_test = (adata.obs[DEMO_SPLIT_KEY] == "test").to_numpy()
    labels = adata.obs[DEMO_LABEL_KEY].astype(str).to_numpy()
    started = time.perf_counter()
    classifier = LogisticRegression(max_iter=2000, random_state=seed).fit(
        features[~is_test], labels[~is_test]
    )
    seconds = time.perf_counter() - started
    metrics = classification_metrics(labels[is_test], classifier.predict(features[is_test]))
    parameters = classifier.coef_.size + classifier.intercept_.size
    return {f"test_{k}": v for k, v in metrics.items()} | {
        "trainable_params": parameters,
        "train_seconds": seconds,
    }


def format_table(rows: dict[str, dict]) -> str:
    header = (
        "| method | trainable params | train time (s) | test macro-F1 | test accuracy | test balanced acc. |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['trainable_params']:,} | {m['train_seconds']:.1f} | {m['test_macro_f1']:.4f} | "
            f"{m['test_accuracy']:.4f} | {m['test_balanced_accuracy']:.4f} |"
        )
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "scpeft-demo", epochs: int | None = None, seed: int = 0, overwrite: bool = False
) -> dict[str, dict]:
    """Train the three model variants and the baseline; print and save the comparison table.

    `out_dir` must be new or empty, or (with `overwrite`) a folder an earlier run wrote; it appears when
    every method has finished.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    staging = make_staging_dir(out_dir)
    try:
        rows = _compare_methods(staging, out_dir, epochs, seed)
        publish(staging, out_dir, command="demo")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"\nOutputs in {out_dir}/ (adapter, card, metrics and plots of each method in its own folder)")
    return rows


def _compare_methods(staging: Path, out_dir: Path, epochs: int | None, seed: int) -> dict[str, dict]:
    """Train every method into `staging`; the cards name the folders as they will be in `out_dir`."""
    adata = demo_data()
    n_test = int((adata.obs[DEMO_SPLIT_KEY] == "test").sum())
    print(
        f"pbmc68k_reduced: {adata.n_obs} cells, {adata.n_vars} genes, {adata.obs[DEMO_LABEL_KEY].nunique()} cell "
        f"types; fixed stratified split with {n_test} test cells. Backbone: the embedded demo scGPT."
    )
    rows = {}
    for method, budget in DEMO_EPOCHS.items():
        print(f"\n== {method} ==")
        result = train_annotation(
            adata,
            DEMO_LABEL_KEY,
            method=method,
            out_dir=staging / method,
            split_key=DEMO_SPLIT_KEY,
            settings=TrainingSettings(epochs=epochs or budget, seed=seed, early_stopping_patience=5),
        )
        card = render_adapter_card(result.out_dir, adapter_ref=str(out_dir / method))
        (result.out_dir / "README.md").write_text(card)
        rows[f"{method} ({'adapter' if method == 'encoder' else method})"] = result.metrics
    rows["logistic regression (log1p expression)"] = logistic_regression_baseline(adata, seed)
    table = format_table(rows)
    print("\n" + table)
    (staging / "comparison.md").write_text(table + "\n")
    (staging / "comparison.json").write_text(json.dumps(rows, indent=2))
    return rows
