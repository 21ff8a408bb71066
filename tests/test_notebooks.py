"""The notebooks in `notebooks/` run top to bottom (their code cells, in order, in one namespace), and each leaves
the results it promises."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

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


CHECKS = {"annotate_pbmc": check_annotate_pbmc, "marker_genes": check_marker_genes}


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    assert notebook.stem in CHECKS, f"add a check of what {notebook.name} produces to CHECKS"
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}[{index}]", "exec"), namespace)
    CHECKS[notebook.stem](namespace, tmp_path)
