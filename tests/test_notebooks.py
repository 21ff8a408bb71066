"""The notebooks in `notebooks/` run top to bottom (their code cells, in order, in one namespace), and each leaves
the results it promises: a notebook with its own check in CHECKS is held to it; any other that trains an annotation
adapter (`result`) or annotates cells (AnnData with `obs["scpeft_pred"]`) is checked for those."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anndata import AnnData

from tests.notebook_runner import run_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def check_annotate_pbmc(namespace: dict, folder: Path) -> None:
    assert namespace["result"].metrics["test_macro_f1"] > 0
    assert (folder / "pbmc-encoder-adapter" / "adapter_model.safetensors").is_file()
    assert namespace["test"].obsm["X_scpeft"].shape[0] == namespace["test"].n_obs


def check_marker_genes(namespace: dict, folder: Path) -> None:
    assert {path.name for path in (folder / "markers").iterdir()} == {
        "markers.csv", "markers.png", "markers_summary.json"
    }  # fmt: skip
    summary, adata = namespace["summary"], namespace["adata"]
    assert set(summary["groups"]) == set(adata.obs[namespace["LABEL_KEY"]].astype(str))
    assert adata.layers["scpeft_attention"].shape == adata.shape
    assert len(namespace["known"]) == len(namespace["CANONICAL"])


def check_integrate_pancreas(namespace: dict, folder: Path) -> None:
    metrics = namespace["result"].metrics
    assert all(0 <= metrics[name]["overall"] <= 1 for name in ("scpeft", "zero_shot", "pca"))
    assert (folder / "pancreas-integration" / "adapter_model.safetensors").is_file()
    assert abs(namespace["again"] - namespace["integrated"].obsm["X_scpeft"]).max() < 1e-5


def check_annotation_outputs(namespace: dict, folder: Path) -> None:
    if "result" in namespace:
        result = namespace["result"]
        assert result.metrics["test_macro_f1"] > 0
        assert (folder / result.out_dir / "adapter_model.safetensors").is_file()
    annotated = [
        value for value in namespace.values() if isinstance(value, AnnData) and "scpeft_pred" in value.obs
    ]
    assert annotated or "result" in namespace, (
        "the notebook neither trains nor annotates: add a check to CHECKS"
    )
    for adata in annotated:
        assert adata.obsm["X_scpeft"].shape[0] == adata.n_obs


CHECKS = {
    "annotate_pbmc": check_annotate_pbmc,
    "marker_genes": check_marker_genes,
    "integrate_pancreas": check_integrate_pancreas,
}


def test_notebooks_are_committed_executed():
    """Readers see results without running anything: every code cell ran, and figures and tables are there."""
    for notebook in NOTEBOOKS:
        cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
        assert [cell["execution_count"] for cell in cells] == list(range(1, len(cells) + 1)), notebook.name
        kinds = {kind for cell in cells for output in cell["outputs"] for kind in output.get("data", {})}
        assert {"image/png", "text/html"} <= kinds, f"{notebook.name} has no figure or no table: {kinds}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    namespace, _ = run_notebook(notebook, tmp_path)
    CHECKS.get(notebook.stem, check_annotation_outputs)(namespace, tmp_path)
