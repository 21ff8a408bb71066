"""The notebooks in `notebooks/` run top to bottom (their code cells, in order, in one namespace); what they trained
(`result`) and annotated (AnnData with `obs["scpeft_pred"]`) is checked, whatever the notebook's data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from anndata import AnnData

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}[{index}]", "exec"), namespace)
    # A notebook that trains an annotation adapter names it `result`; cells it annotates carry their embeddings.
    if "result" in namespace:
        result = namespace["result"]
        assert result.metrics["test_macro_f1"] > 0
        assert (tmp_path / result.out_dir / "adapter_model.safetensors").is_file()
    annotated = [
        value for value in namespace.values() if isinstance(value, AnnData) and "scpeft_pred" in value.obs
    ]
    for adata in annotated:
        assert adata.obsm["X_scpeft"].shape[0] == adata.n_obs
