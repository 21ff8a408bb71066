"""The main job end to end: `scpeft-hf train / predict / embed` on bundled PBMCs with the embedded backbone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from safetensors import safe_open

from scpeft_hf.cli import main as cli_main
from scpeft_hf.demo import DEMO_LABEL_KEY, DEMO_SPLIT_KEY, demo_data
from scpeft_hf.tasks.annotation import load_annotator
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, DEMO_BACKBONE_NAME
from scpeft_hf.tasks.metrics import classification_metrics
from scpeft_hf.tasks.pretrain import PRETRAINING_CELLS

TRAIN_FILES = {
    ".scpeft-hf.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "processor_config.json",
    "vocab.json",
    "metrics.json",
    "run_info.json",
    "README.md",
    "confusion_matrix.png",
    "umap.png",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("annotation")
    demo_data().write_h5ad(folder / "pbmc.h5ad")
    return folder


@pytest.fixture(scope="module")
def trained(workdir) -> Path:
    out = workdir / "encoder"
    code = cli_main(
        ["train", "--data", str(workdir / "pbmc.h5ad"), "--label-key", DEMO_LABEL_KEY, "--split-key", DEMO_SPLIT_KEY,
         "--method", "encoder", "--epochs", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def test_train_writes_a_complete_adapter_folder(trained):
    assert {p.name for p in trained.iterdir()} == TRAIN_FILES
    metrics = json.loads((trained / "metrics.json").read_text())
    expected = {"test_accuracy", "test_macro_f1", "test_balanced_accuracy", "trainable_params", "total_params",
                "train_seconds"}  # fmt: skip
    assert expected <= metrics.keys()
    assert 0 < metrics["trainable_params"] < 0.15 * metrics["total_params"]
    with safe_open(trained / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    # Only the adapters and the head: no backbone weight is stored.
    assert names and all("encoder_adapter" in name or "classifier" in name for name in names)
    processor = json.loads((trained / "processor_config.json").read_text())
    assert len(processor["label_names"]) == 10
    # The embedded backbone is recorded by name, so the folder loads on any installation.
    assert json.loads((trained / "run_info.json").read_text())["base_model"] == DEMO_BACKBONE_NAME
    card = (trained / "README.md").read_text()
    assert "library_name: peft" in card and "base_model_fingerprint" in card and "CD14+ Monocyte" in card


def test_metrics_json_equals_metrics_recomputed_from_predictions(trained, workdir):
    run_info = json.loads((trained / "run_info.json").read_text())
    adata = ad.read_h5ad(workdir / "pbmc.h5ad")
    test = adata[run_info["test_obs_names"]].copy()
    assert (test.obs[DEMO_SPLIT_KEY] == "test").all()
    load_annotator(trained).predict(test)
    recomputed = classification_metrics(test.obs[DEMO_LABEL_KEY].astype(str).to_numpy(),
                                        test.obs["scpeft_pred"].astype(str).to_numpy())  # fmt: skip
    metrics = json.loads((trained / "metrics.json").read_text())
    for key, value in recomputed.items():
        assert metrics[f"test_{key}"] == pytest.approx(value, abs=1e-12)


def test_predict_in_a_new_process_reproduces_predictions_exactly(trained, workdir):
    out = workdir / "predicted.h5ad"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    command = [sys.executable, "-m", "scpeft_hf.cli", "predict", "--adapter", str(trained), "--data",
               str(workdir / "pbmc.h5ad"), "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True, env=env, capture_output=True)
    fresh = ad.read_h5ad(out)
    here = load_annotator(trained).predict(ad.read_h5ad(workdir / "pbmc.h5ad"), copy=True)
    assert (fresh.obs["scpeft_pred"].astype(str) == here.obs["scpeft_pred"].astype(str)).all()
    np.testing.assert_array_equal(
        fresh.obs["scpeft_confidence"].to_numpy(), here.obs["scpeft_confidence"].to_numpy()
    )
    np.testing.assert_array_equal(fresh.obsm["X_scpeft"], here.obsm["X_scpeft"])
    assert fresh.obs["scpeft_pred"].nunique() >= 2


def test_embed_with_and_without_the_adapter(trained, workdir):
    base_out, adapted_out = workdir / "embed_base.h5ad", workdir / "embed_adapter.h5ad"
    data = str(workdir / "pbmc.h5ad")
    assert cli_main(["embed", "--data", data, "--out", str(base_out)]) == 0
    assert cli_main(["embed", "--adapter", str(trained), "--data", data, "--out", str(adapted_out)]) == 0
    base, adapted = ad.read_h5ad(base_out).obsm["X_scpeft"], ad.read_h5ad(adapted_out).obsm["X_scpeft"]
    assert base.shape == adapted.shape == (700, 128)
    assert np.isfinite(base).all() and base.std(0).mean() > 1e-3
    # The trained adapter changes the representation (zero-initialised, it would not before training).
    assert np.abs(base - adapted).max() > 1e-3


# ------------------------------------------------------------------------------------------- bad input


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli_main(args)
    return code, capsys.readouterr().err


def test_unknown_label_key(workdir, capsys):
    out = workdir / "bad_label"
    code, err = run_cli(["train", "--data", str(workdir / "pbmc.h5ad"), "--label-key", "celltype", "--out",
                         str(out)], capsys)  # fmt: skip
    assert code == 2 and "'celltype' is not in adata.obs" in err and "bulk_labels" in err
    assert not out.exists()


def test_single_class(workdir, capsys):
    adata = ad.read_h5ad(workdir / "pbmc.h5ad")
    adata.obs["one"] = "T cell"
    adata.write_h5ad(workdir / "one_class.h5ad")
    out = workdir / "bad_single"
    code, err = run_cli(["train", "--data", str(workdir / "one_class.h5ad"), "--label-key", "one", "--out",
                         str(out)], capsys)  # fmt: skip
    assert code == 2 and "single class" in err
    assert not out.exists()


def test_unknown_method(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--data", str(workdir / "pbmc.h5ad"), "--label-key", DEMO_LABEL_KEY, "--method", "ia3",
                  "--out", str(workdir / "bad_method")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "invalid choice: 'ia3'" in capsys.readouterr().err
    assert not (workdir / "bad_method").exists()


def test_predict_without_gene_overlap(trained, workdir, capsys):
    adata = ad.read_h5ad(workdir / "pbmc.h5ad")
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.write_h5ad(workdir / "no_overlap.h5ad")
    out = workdir / "no_overlap_pred.h5ad"
    code, err = run_cli(["predict", "--adapter", str(trained), "--data", str(workdir / "no_overlap.h5ad"), "--out",
                         str(out)], capsys)  # fmt: skip
    assert code == 2 and "AnnData has 0 of its 765 genes" in err and "gene_column=" in err
    assert not out.exists()


def test_adapter_on_a_different_base_is_refused(trained, workdir, capsys):
    from safetensors.torch import load_file, save_file

    other = workdir / "other_base"
    shutil.copytree(DEMO_BACKBONE, other)
    weights = load_file(other / "model.safetensors")
    name = next(k for k in weights if "encoder.layer.0.attention.self.query.weight" in k)
    weights[name] = weights[name] + 0.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    out = workdir / "wrong_base.h5ad"
    code, err = run_cli(["predict", "--adapter", str(trained), "--base", str(other), "--data",
                         str(workdir / "pbmc.h5ad"), "--out", str(out)], capsys)  # fmt: skip
    assert code == 2 and "fingerprint" in err and str(other) in err
    assert not out.exists()


def test_embedded_backbone_never_saw_an_evaluation_cell():
    """The pretraining pool holds no pbmc68k_reduced cell (every benchmark split of it is evaluation data) and no
    Baron pancreas cell: each listed cell is `source:barcode` from the four pool sources."""
    listed = (DEMO_BACKBONE / PRETRAINING_CELLS).read_text().split()
    sources = {cell.split(":", 1)[0] for cell in listed}
    assert sources == {"pbmc3k", "hlca_lung_query", "celltypist_sample", "pbmc_mosaic"}
    assert len(listed) == len(set(listed)) == 6245
    barcodes = {cell.split(":", 1)[1] for cell in listed}
    assert not barcodes & set(demo_data().obs_names)


def test_an_adapter_of_the_retired_demo_backbone_names_it(trained, workdir, capsys):
    old = workdir / "old_adapter"
    shutil.copytree(trained, old)
    info = json.loads((old / "run_info.json").read_text())
    info["base_model"] = "scpeft-hf/scgpt-demo"
    (old / "run_info.json").write_text(json.dumps(info))
    out = workdir / "old.h5ad"
    code, err = run_cli(["predict", "--adapter", str(old), "--data", str(workdir / "pbmc.h5ad"), "--out",
                         str(out)], capsys)  # fmt: skip
    assert code == 2 and "scpeft-hf/scgpt-demo" in err and "no longer ships" in err and err.count("\n") == 1
    assert not out.exists()
