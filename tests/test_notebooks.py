"""The notebooks in `notebooks/` run top to bottom (their code cells, in order, in one namespace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    assert namespace["result"].metrics["test_macro_f1"] > 0
    assert (tmp_path / "pbmc-encoder-adapter" / "adapter_model.safetensors").is_file()
    assert namespace["test"].obsm["X_scpeft"].shape[0] == namespace["test"].n_obs
