"""The logistic-regression baseline beside every `train` result, and group hold-out / rare-class dropping end to
end through `scpeft-hf train` on the bundled PBMCs."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from scpeft_hf.cli import main as cli_main
from scpeft_hf.datasets import baron_pancreas
from scpeft_hf.demo import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data
from scpeft_hf.tasks.baseline import feature_columns, log_normalised_expression, logistic_regression_baseline

FAST = ["--epochs", "1", "--max-length", "64", "--batch-size", "64"]


@pytest.fixture(scope="module")
def pbmc_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "pbmc.h5ad"
    demo_data()[::2].copy().write_h5ad(path)  # 350 cells, all 10 types
    return path


def train(pbmc_file: Path, out: Path, *extra: str) -> int:
    return cli_main(["train", "--data", str(pbmc_file), "--label-key", DEMO_LABEL_KEY, "--method", "encoder",
                     "--out", str(out), *FAST, *extra])  # fmt: skip


def independent_fit(adata: ad.AnnData, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """The baseline as the issue specifies it, written with scanpy and sklearn alone."""
    adata = adata.copy()
    adata.X = adata.X.astype(np.float64)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    labels = adata.obs[DEMO_LABEL_KEY].astype(str).to_numpy()
    scaler = StandardScaler(with_mean=False).fit(adata.X[train])
    classifier = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced")
    classifier.fit(scaler.transform(adata.X[train]), labels[train])
    predicted = classifier.predict(scaler.transform(adata.X[test]))
    return {
        "test_accuracy": accuracy_score(labels[test], predicted),
        "test_macro_f1": f1_score(labels[test], predicted, average="macro"),
        "test_balanced_accuracy": balanced_accuracy_score(labels[test], predicted),
    }


@pytest.mark.slow  # a real training run: ~30 s alone, minutes on a shared CPU
def test_metrics_json_carries_the_baseline_of_an_independent_sklearn_fit_on_the_same_split(
    pbmc_file, tmp_path
):
    out = tmp_path / "encoder"
    assert train(pbmc_file, out, "--split-key", DEMO_SPLIT_KEY) == 0
    baseline = json.loads((out / "metrics.json").read_text())["baseline"]
    assert baseline["method"] == "logistic_regression"
    assert baseline["features"].startswith("log1p(normalize_total 10000) of all 765 genes")
    adata = ad.read_h5ad(pbmc_file)
    split = adata.obs[DEMO_SPLIT_KEY].to_numpy()
    expected = independent_fit(adata, np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))
    for key, value in expected.items():
        assert baseline[key] == pytest.approx(value, abs=1e-12), key
    assert 0.3 < baseline["test_macro_f1"] < 1  # a real fit, not a constant predictor
    # Training on train + validation instead (what the demo used to do) changes the numbers.
    with_validation = independent_fit(adata, np.flatnonzero(split != "test"), np.flatnonzero(split == "test"))
    assert with_validation != expected
    card = (out / "README.md").read_text()
    assert "| macro-F1 |" in card and f"| {baseline['test_macro_f1']:.4f} |" in card


@pytest.mark.slow  # a real training run: ~30 s alone, minutes on a shared CPU
def test_held_out_groups_and_rare_classes_end_to_end_without_baseline(pbmc_file, tmp_path, capsys):
    out = tmp_path / "held_out"
    assert (
        train(pbmc_file, out, "--test-groups", "phase=G2M,S", "--min-cells-per-class", "10", "--no-baseline")
        == 0
    )
    adata = ad.read_h5ad(pbmc_file)
    counts = adata.obs[DEMO_LABEL_KEY].value_counts()
    rare = sorted(counts[counts < 10].index)
    assert rare  # the 350-cell subset has classes below 10 cells
    kept = adata[~adata.obs[DEMO_LABEL_KEY].isin(rare)]
    run_info = json.loads((out / "run_info.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(run_info["test_obs_names"]) == sorted(kept.obs_names[kept.obs["phase"].isin(["G2M", "S"])])
    assert run_info["test_groups"] == {"phase": ["G2M", "S"]}
    assert (
        run_info["dropped_classes"]
        == metrics["dropped_classes"]
        == {name: int(counts[name]) for name in rare}
    )
    assert not set(rare) & set(run_info["label_names"])
    assert run_info["n_cells"]["train"] + run_info["n_cells"]["validation"] == int(
        (kept.obs["phase"] == "G1").sum()
    )
    assert "baseline" not in metrics
    assert "not computed (`--no-baseline`)" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ("batch=b1", "Test-group column 'batch' is not in adata.obs"),
        ("phase=M", "Test group(s) ['M'] are not values of adata.obs['phase']"),
        ("phase=G1,S,G2M", "leaves no training cells"),
    ],
)
def test_bad_test_groups_fail_in_one_line_before_writing(pbmc_file, tmp_path, capsys, groups, message):
    out = tmp_path / "bad"
    assert train(pbmc_file, out, "--test-groups", groups) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_baseline_that_runs_past_its_time_limit_is_reported_not_waited_for():
    adata = demo_data()
    split = adata.obs[DEMO_SPLIT_KEY].to_numpy()
    block = logistic_regression_baseline(
        adata,
        DEMO_LABEL_KEY,
        np.flatnonzero(split == "train"),
        np.flatnonzero(split == "test"),
        time_limit=1e-3,
    )
    assert block["status"] == "timed out after 0.001 s" and "test_macro_f1" not in block
    assert block["train_seconds"] < 5


def test_hvg_features_are_the_top_2000_of_the_training_cells_only():
    adata = baron_pancreas("human")
    train = np.flatnonzero(adata.obs["donor"] != "human1")
    expression = log_normalised_expression(adata)
    columns, description = feature_columns(expression, train, "hvg")
    assert len(columns) == 2000 and "top 2000 highly variable genes of the training split" in description
    reference = adata[train].copy()
    reference.X = reference.X.astype(np.float64)
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    expected = sc.pp.highly_variable_genes(reference, n_top_genes=2000, inplace=False)["highly_variable"]
    # Rounding differs from scanpy's own normalisation in the last bits: allow a handful of swaps at the cut.
    assert len(set(columns) & set(np.flatnonzero(expected.to_numpy()))) >= 1990
    # Test cells take no part in the choice: changing them changes nothing.
    others = expression.tolil()
    others[np.setdiff1d(np.arange(adata.n_obs), train)] *= 3
    assert np.array_equal(feature_columns(others.tocsr(), train, "hvg")[0], columns)
    assert np.array_equal(feature_columns(expression, train, "all")[0], np.arange(adata.n_vars))
