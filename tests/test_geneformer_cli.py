"""`scpeft-hf train / predict / embed` with a tiny Geneformer on pbmc68k_reduced (symbols mapped to Ensembl IDs)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scpeft_hf.cli import main as cli_main
from scpeft_hf.datasets import pbmc68k_reduced
from tests.geneformer_helpers import ensembl_id, write_tiny_geneformer


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geneformer_cli")
    adata = pbmc68k_reduced()
    adata.write_h5ad(folder / "pbmc.h5ad")
    # an offline symbol -> Ensembl table, copied into the model folder as Geneformer's gene_name_id_dict
    mapping = {symbol: ensembl_id(i + 1) for i, symbol in enumerate(adata.var_names)}
    base = write_tiny_geneformer(folder / "base", adata.n_vars, max_positions=128)
    (base / "gene_name_id_dict_gc104M.json").write_text(json.dumps(mapping))
    return folder


def test_train_predict_embed_on_pbmc(workdir, capsys):
    out = workdir / "lora"
    code = cli_main(
        ["train", "--data", str(workdir / "pbmc.h5ad"), "--label-key", "bulk_labels", "--base", str(workdir / "base"),
         "--method", "lora", "--epochs", "1", "--batch-size", "64", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert (
        processor_config["processor_class"] == "GeneformerProcessor" and processor_config["max_length"] == 128
    )
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["model_type"] == "geneformer" and len(run_info["label_names"]) == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2 * 2 * (32 * 8 + 8 * 32) + 32 * 10 + 10

    assert cli_main(["predict", "--adapter", str(out), "--data", str(workdir / "pbmc.h5ad"),
                     "--out", str(workdir / "predicted.h5ad")]) == 0  # fmt: skip
    predicted = ad.read_h5ad(workdir / "predicted.h5ad")
    assert set(predicted.obs["scpeft_pred"].astype(str)) <= set(run_info["label_names"])
    assert predicted.obsm["X_scpeft"].shape == (700, 32)
    assert np.isfinite(predicted.obsm["X_scpeft"]).all()

    assert cli_main(["embed", "--base", str(workdir / "base"), "--data", str(workdir / "pbmc.h5ad"),
                     "--out", str(workdir / "embedded.h5ad")]) == 0  # fmt: skip
    embedded = ad.read_h5ad(workdir / "embedded.h5ad")
    assert embedded.obsm["X_scpeft"].shape == (700, 32)
    # the adapter only touches layers 1-2 of 4 and the cell embedding comes from layer 3: they must differ
    assert not np.allclose(embedded.obsm["X_scpeft"], predicted.obsm["X_scpeft"])


def test_train_without_a_mapping_table_says_genes_need_ensembl_ids(workdir, capsys):
    bare = write_tiny_geneformer(workdir / "bare", 765, max_positions=128)
    code = cli_main(
        ["train", "--data", str(workdir / "pbmc.h5ad"), "--label-key", "bulk_labels", "--base", str(bare),
         "--epochs", "1", "--out", str(workdir / "never")]
    )  # fmt: skip
    assert code == 2
    assert "not Ensembl IDs" in capsys.readouterr().err
    assert not (workdir / "never").exists()


def test_ensembl_ids_in_var_need_no_table(workdir):
    adata = ad.read_h5ad(workdir / "pbmc.h5ad")
    mapping = json.loads((workdir / "base" / "gene_name_id_dict_gc104M.json").read_text())
    adata.var["ensembl_id"] = pd.Series(mapping)[adata.var_names].to_numpy()
    from scpeft_hf.tasks.backbones import load_processor

    processor = load_processor(write_tiny_geneformer(workdir / "keyed", 765, max_positions=128))
    assert processor(adata[:5])["length"] == [min(n, 126) + 2 for n in (adata[:5].X > 0).sum(axis=1).A1]
