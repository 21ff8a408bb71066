"""`integrate` end to end on Baron human pancreas (4 donors), its bad-input refusals, and embedding new batches."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pytest
from huggingface_hub import constants

from scpeft_hf import datasets
from scpeft_hf.errors import InvalidInputError, MissingDependencyError, MissingKeyError
from scpeft_hf.tasks.embedding import embed_cells
from scpeft_hf.tasks.hub import push_adapter
from scpeft_hf.tasks.integration import (
    IntegrationSettings,
    check_integration_input,
    integrate,
    load_integration_model,
)
from scpeft_hf.tasks.training_knobs import resolve_precision
from tests.hub_server import HubServer
from tests.test_hub import hub_environment, run_scpeft

FAST = IntegrationSettings(epochs=1, max_length=64, n_top_genes=300, batch_size=16)


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """pbmc68k_reduced counts (one donor) with a synthetic split into batches, for the input checks only."""
    adata = datasets.pbmc68k_reduced()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2 == 0, "a", "b")
    return adata


@pytest.fixture(scope="module")
def baron() -> ad.AnnData:
    """100 cells of each of Baron human's 4 donors."""
    adata = datasets.baron_pancreas("human")
    rng = np.random.default_rng(0)
    rows = [
        rng.choice(np.flatnonzero(adata.obs["donor"] == d), 100, replace=False)
        for d in ["human1", "human2", "human3", "human4"]
    ]
    return adata[np.sort(np.concatenate(rows))].copy()


def test_missing_batch_key_and_label_key_are_named(pbmc):
    with pytest.raises(MissingKeyError, match="--batch-key 'donor_id' is not a column"):
        check_integration_input(pbmc, "donor_id", None, 10)
    with pytest.raises(MissingKeyError, match="--label-key 'celltype'"):
        check_integration_input(pbmc, "batch", "celltype", 10)


def test_single_batch_is_refused(pbmc):
    with pytest.raises(InvalidInputError, match="integration needs two or more batches"):
        check_integration_input(pbmc, "donor", None, 10)


def test_batches_under_ten_cells_are_dropped_with_a_warning_unless_fewer_than_two_remain(pbmc):
    adata = pbmc.copy()
    adata.obs["batch"] = adata.obs["batch"].astype(str)
    adata.obs.iloc[:5, adata.obs.columns.get_loc("batch")] = "tiny"
    with pytest.warns(UserWarning, match=r"dropping 5 cells .*tiny: 5"):
        kept = check_integration_input(adata, "batch", None, 10)
    assert kept.n_obs == adata.n_obs - 5 and "tiny" not in set(kept.obs["batch"])
    two = adata[:14].copy()  # "tiny" (5 cells) and 9 cells of a/b
    with pytest.raises(InvalidInputError, match="with at least 10 cells"):
        check_integration_input(two, "batch", None, 10)


def test_values_that_are_not_counts_are_refused_before_anything_is_written(pbmc, tmp_path):
    logged = pbmc.copy()
    logged.X = np.log1p(logged.X.toarray() if hasattr(logged.X, "toarray") else logged.X)
    with pytest.raises(InvalidInputError, match="does not hold raw counts"):
        integrate(logged, "batch", out_dir=tmp_path / "out", settings=FAST)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_missing_extra_names_it(pbmc, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"scpeft-hf\[integration\]"):
        integrate(pbmc, "batch", out_dir=tmp_path / "out", settings=FAST)
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_one_line_for_a_missing_batch_key(pbmc, tmp_path):
    data = tmp_path / "cells.h5ad"
    pbmc.write_h5ad(data)
    result = subprocess.run(
        [sys.executable, "-m", "scpeft_hf.cli", "integrate", "--data", str(data), "--batch-key", "nope",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--batch-key 'nope' is not a column of adata.obs" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_integrate_on_baron_writes_a_complete_folder_and_reloads(baron, tmp_path, monkeypatch):
    out = tmp_path / "integrated"
    result = integrate(baron, "donor", "cell_type", method="encoder", out_dir=out, settings=FAST)
    names = sorted(path.name for path in out.iterdir())
    for expected in ("README.md", "adapter_config.json", "adapter_model.safetensors", "integrated.h5ad",
                     "metrics.json", "processor_config.json", "run_info.json", "umap.png"):  # fmt: skip
        assert expected in names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["metrics_library"] == "scib-metrics 0.5.10"
    for embedding in ("scpeft", "zero_shot", "pca"):
        scores = metrics[embedding]
        for key in ("nmi", "ari", "asw_label", "asw_batch", "graph_conn", "ilisi", "clisi"):
            assert 0 <= scores[key] <= 1, (embedding, key)
        assert scores["avg_bio"] == pytest.approx(
            np.mean([scores["nmi"], scores["ari"], scores["asw_label"]])
        )
        assert scores["avg_batch"] == pytest.approx(np.mean([scores["asw_batch"], scores["graph_conn"]]))
        assert scores["overall"] == pytest.approx(0.6 * scores["avg_bio"] + 0.4 * scores["avg_batch"])
    assert metrics["pca"]["avg_bio"] != metrics["scpeft"]["avg_bio"]

    integrated = ad.read_h5ad(out / "integrated.h5ad")
    for key in ("X_scpeft", "X_scpeft_zero_shot"):
        assert np.allclose(np.linalg.norm(integrated.obsm[key], axis=1), 1, atol=1e-5)
    assert not np.allclose(integrated.obsm["X_scpeft"], integrated.obsm["X_scpeft_zero_shot"], atol=1e-3)
    assert (
        integrated.uns["scpeft"]["task"] == "integration" and integrated.uns["scpeft"]["batch_key"] == "donor"
    )
    record = integrated.uns["scpeft"]
    assert record["settings"]["precision"] == "auto" and record["precision_used"] == resolve_precision("auto")
    run_info = json.loads((out / "run_info.json").read_text())
    assert record["base"]["fingerprint"] == run_info["base_model_fingerprint"]
    assert record["embeddings"]["scpeft"] == "X_scpeft" and "torch" in record["versions"]
    assert "README.md" in names and "DSBN" in (out / "README.md").read_text()

    # Reload: the saved adapter, heads and DSBN statistics give the same embeddings.
    model = load_integration_model(out)
    np.testing.assert_allclose(model.embed(baron), integrated.obsm["X_scpeft"], atol=1e-5)
    np.testing.assert_allclose(
        embed_cells(baron, adapter=out, copy=True).obsm["X_scpeft"], integrated.obsm["X_scpeft"], atol=1e-5
    )

    # A donor the adapter never saw: DSBN uses the mean statistics of the training donors, with a warning.
    renamed = baron.copy()
    renamed.obs["donor"] = renamed.obs["donor"].astype(str).replace("human1", "human9")
    with pytest.warns(UserWarning, match="batches not seen in training \\(human9\\)"):
        unseen = model.embed(renamed)
    is_renamed = (renamed.obs["donor"] == "human9").to_numpy()
    assert np.isfinite(unseen).all()
    np.testing.assert_allclose(unseen[~is_renamed], integrated.obsm["X_scpeft"][~is_renamed], atol=1e-5)
    assert np.abs(unseen[is_renamed] - integrated.obsm["X_scpeft"][is_renamed]).max() > 1e-3
    with warnings.catch_warnings(), pytest.raises(MissingKeyError, match="--batch-key"):
        warnings.simplefilter("ignore")
        model.embed(baron, batch_key="run")

    # `push` shares it (no label names needed); `embed --adapter USER/NAME` in a new process embeds the same.
    with HubServer() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        push_adapter(out, "alice/baron-integration")
        baron.write_h5ad(tmp_path / "baron.h5ad")
        result = run_scpeft(
            ["embed", "--adapter", "alice/baron-integration", "--data", str(tmp_path / "baron.h5ad"),
             "--out", str(tmp_path / "embedded.h5ad")],
            hub_environment(hub.url, tmp_path / "hf_home"),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from_hub = ad.read_h5ad(tmp_path / "embedded.h5ad").obsm["X_scpeft"]
    np.testing.assert_allclose(from_hub, integrated.obsm["X_scpeft"], atol=1e-5)
