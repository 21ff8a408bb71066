"""Cross-species annotation through the CLI on Baron pancreas (real mouse and human cells, tiny budgets):
`train --species mouse`, `predict` with the saved gene map or `--species`, metrics.json, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from scpeft_hf.cli import main as cli_main
from scpeft_hf.data import GeneVocab
from scpeft_hf.data.orthologs import GENE_MAP_NAME, GeneMap, read_pretrained_genes
from scpeft_hf.datasets import baron_pancreas, orthologs
from scpeft_hf.tasks.backbones import DEMO_BACKBONE
from scpeft_hf.tasks.hub import shareable_files
from scpeft_hf.tasks.metrics import classification_metrics, label_transfer_metrics

TINY = ["--epochs", "1", "--max-length", "64", "--batch-size", "32"]


def subsample(adata: ad.AnnData, n_cells: int, seed: int = 0) -> ad.AnnData:
    keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False))
    return adata[keep].copy()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cross_species")
    mouse = subsample(baron_pancreas("mouse"), 300)
    # Scenario (a) in small: donor mouse1 trains, mouse2 is the test set, on types both donors have here.
    mouse.obs["split"] = np.where(mouse.obs["donor"] == "mouse2", "test", "train")
    mouse.write_h5ad(folder / "mouse.h5ad")
    common = mouse[mouse.obs["cell_type"].isin(["alpha", "beta", "delta", "ductal", "endothelial"])].copy()
    common.obs["cell_type"] = common.obs["cell_type"].astype(str)
    common.write_h5ad(folder / "mouse_common.h5ad")
    human = subsample(baron_pancreas("human"), 300)
    human.obs["cell_type"] = human.obs["cell_type"].astype(str)
    human.write_h5ad(folder / "human.h5ad")
    return folder


@pytest.fixture(scope="module")
def mouse_adapter(workdir) -> Path:
    out = workdir / "mouse-encoder"
    code = cli_main(
        ["train", "--data", str(workdir / "mouse_common.h5ad"), "--species", "mouse", "--label-key", "cell_type",
         "--split-key", "split", "--method", "encoder", "--out", str(out), *TINY]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def human_adapter(workdir) -> Path:
    out = workdir / "human-encoder"
    code = cli_main(
        ["train", "--data", str(workdir / "human.h5ad"), "--label-key", "cell_type", "--method", "encoder",
         "--out", str(out), *TINY]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.mark.slow
def test_train_on_mouse_saves_the_gene_map_and_its_coverage(workdir, mouse_adapter):
    gene_map = json.loads((mouse_adapter / GENE_MAP_NAME).read_text())
    assert (gene_map["species"], gene_map["policy"], gene_map["table_source"]) == ("mouse", "sum", "shipped")
    assert gene_map["mapping"]["Ins1"] == gene_map["mapping"]["Ins2"] == "INS"
    processor_config = json.loads((mouse_adapter / "processor_config.json").read_text())
    assert processor_config["species"] == "mouse"
    # The coverage in run_info is that of the whole AnnData through the shipped table and the backbone vocabulary.
    mouse = ad.read_h5ad(workdir / "mouse_common.h5ad")
    vocab = GeneVocab.from_file(DEMO_BACKBONE / "vocab.json")
    pretrained = read_pretrained_genes(DEMO_BACKBONE)
    _, coverage = GeneMap.from_table("mouse").apply(mouse, vocab.token_to_id, pretrained_genes=pretrained)
    run_info = json.loads((mouse_adapter / "run_info.json").read_text())
    assert run_info["orthologs"] == coverage.as_dict()
    assert coverage.source_genes == 14877 and coverage.mapped > 0.8 * coverage.source_genes
    assert 0 < coverage.pretrained < coverage.in_vocabulary
    assert GENE_MAP_NAME in shareable_files(mouse_adapter)


@pytest.mark.slow
def test_predict_applies_the_saved_gene_map_and_writes_metrics(workdir, mouse_adapter, capsys):
    out = workdir / "predicted" / "mouse.h5ad"
    code = cli_main(
        ["predict", "--adapter", str(mouse_adapter), "--data", str(workdir / "mouse.h5ad"), "--label-key",
         "cell_type", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "Orthologs (mouse)" in capsys.readouterr().out
    predicted = ad.read_h5ad(out)
    metrics = json.loads((out.parent / "metrics.json").read_text())
    expected = classification_metrics(
        predicted.obs["cell_type"].astype(str).to_numpy(), predicted.obs["scpeft_pred"].astype(str).to_numpy()
    )
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert (metrics["n_cells"], metrics["n_scored"]) == (300, 300)
    # Without the saved map, case-insensitive matching sees other genes: different embeddings.
    assert (
        metrics["orthologs"]["human_genes"]
        == json.loads((mouse_adapter / "run_info.json").read_text())["orthologs"]["human_genes"]
    )


@pytest.mark.slow
def test_human_adapter_predicts_mouse_cells_on_shared_labels(workdir, human_adapter, tmp_path, capsys):
    label_map = tmp_path / "labels.csv"
    label_map.write_text("T_cell,t_cell\n")
    human_labels = set(json.loads((human_adapter / "run_info.json").read_text())["label_names"])
    mouse = ad.read_h5ad(workdir / "mouse.h5ad")
    mapped = mouse.obs["cell_type"].astype(str).replace({"T_cell": "t_cell"})
    n_unshared = int((~mapped.isin(human_labels)).sum())
    assert n_unshared > 0

    out = tmp_path / "all" / "pred.h5ad"
    common = ["predict", "--adapter", str(human_adapter), "--data", str(workdir / "mouse.h5ad"), "--species",
              "mouse", "--label-key", "cell_type", "--label-map", str(label_map)]  # fmt: skip
    assert cli_main([*common, "--out", str(out)]) == 0
    every = json.loads((out.parent / "metrics.json").read_text())
    assert every["n_unseen_label_cells"] == n_unshared and every["n_scored"] == 300
    assert "counted as errors" in capsys.readouterr().out

    out = tmp_path / "shared" / "pred.h5ad"
    assert cli_main([*common, "--shared-labels-only", "--out", str(out)]) == 0
    assert f"excluded {n_unshared}" in capsys.readouterr().out
    shared = json.loads((out.parent / "metrics.json").read_text())
    assert (shared["n_scored"], shared["n_excluded"]) == (300 - n_unshared, n_unshared)
    predicted = ad.read_h5ad(out)
    keep = mapped.isin(human_labels).to_numpy()
    expected = classification_metrics(
        mapped.to_numpy()[keep], predicted.obs["scpeft_pred"].astype(str).to_numpy()[keep]
    )
    assert shared["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    # Unseen labels count as errors, so scoring every cell can only lower accuracy.
    assert every["accuracy"] <= shared["accuracy"]


@pytest.mark.slow
def test_embed_with_species(workdir, tmp_path):
    out = tmp_path / "embedded.h5ad"
    assert (
        cli_main(["embed", "--data", str(workdir / "mouse.h5ad"), "--species", "mouse", "--out", str(out)])
        == 0
    )
    assert ad.read_h5ad(out).obsm["X_scpeft"].shape == (300, 128)


def _fails(argv: list[str], capsys) -> str:
    assert cli_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_bad_species_inputs_fail_in_one_line_and_write_nothing(workdir, tmp_path, capsys):
    data = str(workdir / "mouse.h5ad")
    out = tmp_path / "out"
    train = ["train", "--data", data, "--label-key", "cell_type", "--out", str(out), *TINY]
    assert "'zebrafish' has no shipped ortholog table" in _fails([*train, "--species", "zebrafish"], capsys)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("mouse,human\nIns1,INS\n")
    assert "lacks column(s) source_gene, human_gene" in _fails(
        [*train, "--species", "mouse", "--ortholog-table", str(wrong)], capsys
    )
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("source_gene,human_gene\nNotAGene,INS\n")
    assert "0 of the AnnData's 14,877 genes" in _fails(
        [*train, "--species", "pig", "--ortholog-table", str(nothing)], capsys
    )
    few = tmp_path / "few.csv"
    vocab = GeneVocab.from_file(DEMO_BACKBONE / "vocab.json")
    shipped = orthologs("mouse")
    shipped[shipped["human_gene"].isin(vocab.token_to_id)].head(50)[["source_gene", "human_gene"]].to_csv(
        few, index=False
    )
    assert "--strict" in _fails(
        [*train, "--species", "mouse", "--ortholog-table", str(few), "--strict"], capsys
    )
    assert "add --label-key" in _fails(
        [
            "predict",
            "--adapter",
            str(tmp_path),
            "--data",
            data,
            "--shared-labels-only",
            "--out",
            str(out / "p.h5ad"),
        ],
        capsys,
    )
    assert not out.exists()


def test_label_transfer_metrics_count_unseen_labels_as_errors_or_leave_them_out():
    truth = ["alpha", "beta", "T_cell", "schwann"]
    predicted = ["alpha", "alpha", "t_cell", "alpha"]
    known = ["alpha", "beta", "t_cell"]
    every = label_transfer_metrics(truth, predicted, known, {"T_cell": "t_cell", "t_cell": "T_cell"})
    assert (every["accuracy"], every["n_scored"], every["unseen_labels"]) == (0.5, 4, ["schwann"])
    shared = label_transfer_metrics(truth, predicted, known, {"T_cell": "t_cell"}, shared_only=True)
    assert (shared["accuracy"], shared["n_scored"], shared["n_excluded"]) == (pytest.approx(2 / 3), 3, 1)
    assert shared["balanced_accuracy"] == pytest.approx((1 + 0 + 1) / 3)
    without_map = label_transfer_metrics(truth, predicted, known, shared_only=True)
    assert without_map["n_excluded"] == 2


def test_species_on_a_geneformer_base_is_refused_in_one_line(tmp_path, capsys):
    from tests.geneformer_helpers import write_tiny_geneformer

    base = write_tiny_geneformer(tmp_path / "geneformer", 20)
    cells = subsample(baron_pancreas("mouse"), 50)
    cells.write_h5ad(tmp_path / "mouse.h5ad")
    out = tmp_path / "out"
    capsys.readouterr()  # the helper's progress bars
    message = _fails(
        ["train", "--data", str(tmp_path / "mouse.h5ad"), "--label-key", "cell_type", "--base", str(base),
         "--species", "mouse", "--out", str(out), *TINY],
        capsys,
    )  # fmt: skip
    assert "species applies to scGPT backbones" in message
    assert not out.exists()
