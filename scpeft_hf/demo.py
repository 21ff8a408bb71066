"""`scpeft-hf demo`: annotate bundled PBMCs offline with an encoder adapter, compared with a linear probe,
full fine-tuning and a logistic-regression baseline on the same split.

The demo composes the annotation task (three trainings and a comparison), so it sits above `tasks/`, beside the
CLI, and the tasks never import each other. `demo_data` is its fixed pbmc68k_reduced split, which the notebooks
and tests use too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .output_folders import check_out_dir, make_staging_dir, publish
from .tasks.annotation import TrainingSettings, train_annotation
from .tasks.backbones import DEMO_BACKBONE_NAME
from .tasks.card import render_adapter_card
from .tasks.splits import make_splits

DEMO_LABEL_KEY = "bulk_labels"
DEMO_SPLIT_KEY = "demo_split"
DEMO_SPLIT_SEED = 0

# Epoch budgets per method (early stopping on validation macro-F1 may end sooner).
DEMO_EPOCHS = {"encoder": 5, "probe": 5, "full": 4}


def demo_data():
    """pbmc68k_reduced with exact counts and `obs["demo_split"]`: the fixed stratified 72/8/20 split."""
    from .datasets import pbmc68k_reduced

    adata = pbmc68k_reduced()
    splits = make_splits(adata.obs[DEMO_LABEL_KEY], seed=DEMO_SPLIT_SEED)
    column = np.empty(adata.n_obs, dtype=object)
    for name, index in splits.items():
        column[index] = name
    adata.obs[DEMO_SPLIT_KEY] = column
    return adata


def format_table(rows: dict[str, dict]) -> str:
    """One row per method; a baseline that timed out shows "n/a"."""
    header = (
        "| method | trainable params | train time (s) | test macro-F1 | test accuracy | test balanced acc. |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows.items():
        scores = [m.get(f"test_{key}") for key in ("macro_f1", "accuracy", "balanced_accuracy")]
        cells = [
            f"{m['trainable_params']:,}" if "trainable_params" in m else "n/a",
            f"{m['train_seconds']:.1f}",
        ]
        cells += ["n/a" if score is None else f"{score:.4f}" for score in scores]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "scpeft-demo",
    epochs: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    precision: str = "auto",
    device: str = "auto",
) -> dict[str, dict]:
    """Train the three model variants; print and save their comparison with the logistic-regression baseline that
    `train_annotation` fits on the same split (tasks/baseline.py).

    `out_dir` must be new or empty, or (with `overwrite`) a folder an earlier run wrote; it appears when
    every method has finished. `precision` and `device` apply to every method's training (see training_knobs).
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    staging = make_staging_dir(out_dir)
    try:
        knobs = {"precision": precision, "device": device}
        rows = _compare_methods(staging, out_dir, epochs, seed, knobs)
        publish(staging, out_dir, command="demo")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"\nOutputs in {out_dir}/ (adapter, card, metrics and plots of each method in its own folder)")
    return rows


def _compare_methods(
    staging: Path, out_dir: Path, epochs: int | None, seed: int, knobs: dict
) -> dict[str, dict]:
    """Train every method into `staging`; the cards name the folders as they will be in `out_dir`."""
    adata = demo_data()
    n_test = int((adata.obs[DEMO_SPLIT_KEY] == "test").sum())
    print(
        f"pbmc68k_reduced: {adata.n_obs} cells, {adata.n_vars} genes, {adata.obs[DEMO_LABEL_KEY].nunique()} cell "
        f"types; fixed stratified split with {n_test} test cells. Backbone: the embedded {DEMO_BACKBONE_NAME}."
    )
    rows, baseline = {}, None
    for method, budget in DEMO_EPOCHS.items():
        print(f"\n== {method} ==")
        result = train_annotation(
            adata,
            DEMO_LABEL_KEY,
            method=method,
            out_dir=staging / method,
            split_key=DEMO_SPLIT_KEY,
            # The split is fixed, so every method's metrics carry the same baseline (fitted on its training cells).
            settings=TrainingSettings(epochs=epochs or budget, seed=seed, early_stopping_patience=5, **knobs),
        )
        card = render_adapter_card(result.out_dir, adapter_ref=str(out_dir / method))
        (result.out_dir / "README.md").write_text(card)
        baseline = baseline or result.metrics["baseline"]
        rows[f"{method} ({'adapter' if method == 'encoder' else method})"] = result.metrics
    rows["logistic regression (same training split)"] = baseline
    table = format_table(rows)
    print("\n" + table)
    (staging / "comparison.md").write_text(table + "\n")
    (staging / "comparison.json").write_text(json.dumps(rows, indent=2))
    return rows
