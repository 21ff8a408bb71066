"""Attention gene scores and marker genes: the two methods' arithmetic, the hooked layer, and `scpeft-hf markers`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from peft import get_peft_model
from scipy.stats import rankdata

from scpeft_hf.cli import main as cli_main
from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.errors import InvalidInputError
from scpeft_hf.models.scgpt import ScGPTConfig, ScGPTForCellClassification
from scpeft_hf.tasks.annotation import TrainingSettings, train_annotation
from scpeft_hf.tasks.attention import (
    SCORES_KEY,
    attention_gene_scores,
    average_ranks,
    find_markers,
    marker_paths,
    qk_rank_cls_scores,
)
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, load_classifier, load_processor, make_collator
from scpeft_hf.tasks.gene_ranking import marker_genes_df, rank_genes_by_score
from scpeft_hf.tuners import PrefixAdapterConfig
from tests.geneformer_helpers import SPECIALS_V2, ensembl_id, write_tiny_geneformer

B_CELL_MARKERS = {"MS4A1", "CD79A", "CD79B"}


# ------------------------------------------------------------------------------------------- arithmetic


def test_qk_rank_matches_a_hand_computed_case():
    # 4 tokens (<cls> + 3 genes), 2 heads of width 1: head 1 q = (1, 2, 0, 1), k = (1, 1, 2, 0); head 2 q = 1, k =
    # (0, 3, 1, 2). Head 1: S rows (1,1,2,0), (2,2,4,0), (0,0,0,0), (1,1,2,0) -> row ranks / 4 (ties averaged):
    # (.625,.625,1,.25) x2, (.625,.625,.625,.625), (.625,.625,1,.25). Row 0 ranked within each column: column 0
    # and 1 all tied -> 2.5/4; column 2 (1,1,.625,1): one below, three equal -> (1 + 2)/4 = .75; column 3
    # (.25,.25,.625,.25): none below, three equal -> 2/4 = .5. Head 2: every row ranks (1,4,2,3)/4, so every
    # column is tied -> .625. Mean over heads: (.625, .625, .6875, .5625).
    query = torch.tensor([[1.0, 1.0], [2.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    key = torch.tensor([[1.0, 0.0], [1.0, 3.0], [2.0, 1.0], [0.0, 2.0]])
    scores = qk_rank_cls_scores(query, key, num_heads=2)
    np.testing.assert_array_equal(scores, [0.625, 0.625, 0.6875, 0.5625])


def scipy_qk_rank(query: np.ndarray, key: np.ndarray, num_heads: int) -> np.ndarray:
    """Independent reference: full row ranking, then full column ranking, with scipy."""
    tokens = query.shape[0]
    per_head = []
    for head_query, head_key in zip(np.split(query, num_heads, 1), np.split(key, num_heads, 1), strict=True):
        rows = rankdata(head_query.astype(np.float64) @ head_key.astype(np.float64).T, axis=1) / tokens
        per_head.append(rankdata(rows, axis=0)[0] / tokens)
    return np.mean(per_head, axis=0)


def test_average_ranks_and_qk_rank_agree_with_scipy_on_random_tied_values():
    generator = np.random.default_rng(0)
    values = generator.integers(0, 4, size=(3, 11, 13)).astype(np.float64)
    np.testing.assert_array_equal(average_ranks(values), rankdata(values, axis=-1))
    query = torch.from_numpy(generator.integers(-2, 3, size=(9, 6)).astype(np.float32))
    key = torch.from_numpy(generator.integers(-2, 3, size=(9, 6)).astype(np.float32))
    np.testing.assert_array_equal(
        qk_rank_cls_scores(query, key, 3), scipy_qk_rank(query.numpy(), key.numpy(), 3)
    )


# --------------------------------------------------------------------------------------- on real models


@pytest.fixture(scope="module")
def cells():
    adata = pbmc68k_reduced()
    return adata[[0, 1, 2, 3, 4, 5, 300, 301]].copy()


def tiny_scgpt(pre_norm: bool) -> ScGPTForCellClassification:
    config = ScGPTConfig.from_pretrained(DEMO_BACKBONE)
    config.update(dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=3,
                       pre_norm=pre_norm, hidden_dropout_prob=0.0, num_labels=3))  # fmt: skip
    torch.manual_seed(0)
    return ScGPTForCellClassification(config).eval()


def test_cells_are_padded_in_one_batch(cells):
    lengths = (cells.X > 0).sum(1).A1
    assert len(set(lengths)) > 1  # so padding is excluded in the tests below


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("layer", [0, -1])
def test_qk_rank_reads_the_chosen_layers_query_and_key(cells, pre_norm, layer):
    model = tiny_scgpt(pre_norm)
    processor = load_processor(DEMO_BACKBONE)
    scores, settings = attention_gene_scores(model, processor, cells, layer=layer, batch_size=len(cells))
    assert settings["layer"] == layer % 3 and settings["method"] == "qk-rank"

    batch = make_collator(processor, train=False)(processor(cells).select_columns(["input_ids", "values"]))
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[layer % 3]
    attention = model.scgpt.encoder.layer[layer].attention
    if pre_norm:  # the projections see the normalised input
        hidden = attention.output.LayerNorm(hidden)
    for cell in range(len(cells)):
        real = torch.nonzero(batch["attention_mask"][cell]).flatten()
        with torch.no_grad():
            query, key = attention.self.query(hidden[cell, real]), attention.self.key(hidden[cell, real])
        expected = scipy_qk_rank(query.numpy(), key.numpy(), 2)
        columns = var_columns(processor, cells, batch["input_ids"][cell, real[1:]])
        np.testing.assert_array_equal(scores[cell].toarray()[0, columns], expected[1:])
        # genes the cell does not express (or outside the vocabulary) are 0
        assert scores[cell].nnz == len(real) - 1


def var_columns(processor, cells, token_ids: torch.Tensor) -> list[int]:
    """The var column of each scGPT gene token."""
    id_to_gene = {token: gene for gene, token in processor.vocab.token_to_id.items()}
    return [cells.var_names.get_loc(id_to_gene[token]) for token in token_ids.tolist()]


def test_cls_softmax_equals_output_attentions_with_a_prefix_adapter(cells):
    model = tiny_scgpt(pre_norm=False)
    processor = load_processor(DEMO_BACKBONE)
    # random prefix tokens on layer 0: the last layer's sequence carries 8 slots after <cls>
    model = get_peft_model(
        model, PrefixAdapterConfig(num_tokens=8, layers_to_transform=[0], init_weights=False)
    )
    scores, _ = attention_gene_scores(model, processor, cells, method="cls-softmax", batch_size=len(cells))
    batch = make_collator(processor, train=False)(processor(cells).select_columns(["input_ids", "values"]))
    with torch.no_grad():
        attentions = model(**batch, output_attentions=True).attentions[-1]  # prefix slots stripped
    expected = attentions.mean(1)[:, 0, :]
    for cell in range(len(cells)):
        genes = torch.nonzero(batch["attention_mask"][cell]).flatten()[1:]
        ours = scores[cell].toarray()[0, var_columns(processor, cells, batch["input_ids"][cell, genes])]
        np.testing.assert_allclose(ours, expected[cell, genes].numpy(), atol=1e-6, rtol=0)
        # <cls> and the prefix slots take their share of the probability
        assert ours.sum() < 1 - 1e-3


def geneformer_cells(cells, folder):
    mapping = {symbol: ensembl_id(i + 1) for i, symbol in enumerate(pbmc68k_reduced().var_names)}
    (folder / "gene_name_id_dict_gc104M.json").write_text(json.dumps(mapping))
    return cells


def test_cls_softmax_equals_output_attentions_on_geneformer_v2(cells, tmp_path):
    base = write_tiny_geneformer(tmp_path / "v2", 765, max_positions=128)
    geneformer_cells(cells, base)
    processor = load_processor(base)
    model = load_classifier(base, processor, num_labels=3).eval()
    scores, settings = attention_gene_scores(
        model, processor, cells, method="cls-softmax", layer=1, batch_size=8
    )
    assert settings["n_cells_subset"] > 0  # pbmc cells have more than the 126 genes that fit
    batch = make_collator(processor, train=False)(processor(cells).select_columns(["input_ids"]))
    model.set_attn_implementation(
        "eager"
    )  # scores were computed on SDPA; BERT returns probabilities from eager
    with torch.no_grad():
        expected = model(**batch, output_attentions=True).attentions[1].mean(1)[:, 0, :]
    for cell in range(len(cells)):
        ids = batch["input_ids"][cell]
        genes = torch.nonzero((batch["attention_mask"][cell] > 0) & (ids >= len(SPECIALS_V2))).flatten()
        assert scores[cell].nnz == len(genes)  # <cls>, <eos> and padding are not genes
        # gene i of pbmc (var order) is ENSG...(i+1), token 4 + i in the toy dictionary
        ours = scores[cell].toarray()[0, ids[genes].numpy() - len(SPECIALS_V2)]
        np.testing.assert_allclose(ours, expected[cell, genes].numpy(), atol=1e-6, rtol=0)


def test_geneformer_v1_is_refused(cells, tmp_path):
    base = write_tiny_geneformer(tmp_path / "v1", 765, v2=False, max_positions=128)
    geneformer_cells(cells, base)
    processor = load_processor(base)
    model = load_classifier(base, processor, num_labels=3)
    with pytest.raises(InvalidInputError, match="no <cls>|has none"):
        attention_gene_scores(model, processor, cells)


# -------------------------------------------------------------------------- a trained adapter, the CLI


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory):
    """An encoder adapter trained briefly with `train_annotation` on pbmc68k_reduced (the embedded backbone)."""
    folder = tmp_path_factory.mktemp("markers")
    adata = pbmc68k_reduced()
    adata.write_h5ad(folder / "pbmc.h5ad")
    train_annotation(adata, "bulk_labels", "encoder", folder / "encoder", settings=TrainingSettings(epochs=2))
    return folder


@pytest.mark.slow
def test_markers_cli_on_pbmc_with_a_trained_adapter(trained_adapter, capsys):
    out = trained_adapter / "result" / "markers.csv"
    code = cli_main(["markers", "--adapter", str(trained_adapter / "encoder"), "--data",
                     str(trained_adapter / "pbmc.h5ad"), "--label-key", "bulk_labels", "--out", str(out)])  # fmt: skip
    assert code == 0
    paths = marker_paths(out)
    table = pd.read_csv(paths["csv"])
    assert list(table.columns) == ["group", "rank", "gene", "score", "pvalue", "pvalue_adj"]
    assert len(table) == 10 * 20 and table.groupby("group")["rank"].max().eq(20).all()
    assert (table["pvalue_adj"] >= table["pvalue"]).all() and table["pvalue"].between(0, 1).all()
    b_cells = set(table.loc[table["group"] == "CD19+ B", "gene"])
    assert len(b_cells & B_CELL_MARKERS) >= 2
    summary = json.loads(paths["summary"].read_text())
    assert summary["scores"]["method"] == "qk-rank" and summary["scores"]["layer"] == 3
    for result in summary["groups"].values():
        assert result["overlap_with_wilcoxon"] == len(
            set(result["top_genes"]) & set(result["wilcoxon_top_genes"])
        )
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "CD19+ B: " in capsys.readouterr().out


def small_groups_data(trained_adapter):
    adata = sc.read_h5ad(trained_adapter / "pbmc.h5ad")
    rare = np.flatnonzero(adata.obs["bulk_labels"] == "CD34+")[:2]
    common = np.flatnonzero(adata.obs["bulk_labels"].isin(["CD19+ B", "CD14+ Monocyte", "CD56+ NK"]))[:90]
    subset = adata[np.concatenate([rare, common])].copy()
    subset.obs["bulk_labels"] = subset.obs["bulk_labels"].astype(str)
    return subset


@pytest.mark.slow
def test_markers_library_call_skips_groups_under_three_cells(trained_adapter, tmp_path):
    adata = small_groups_data(trained_adapter)
    summary = find_markers(adata, trained_adapter / "encoder", "bulk_labels", tmp_path / "m.csv", top=10,
                           method="cls-softmax", reference="CD14+ Monocyte")  # fmt: skip
    assert summary["skipped_groups"] == {"CD34+": "2 cells (< 3): not ranked"}
    assert set(summary["groups"]) == {"CD19+ B", "CD56+ NK"}
    assert (
        adata.uns["scpeft"]["settings"]["method"] == "cls-softmax"
        and adata.uns["scpeft"]["task"] == "markers"
    )
    # scanpy's own readers understand the ranking
    scanpy_table = sc.get.rank_genes_groups_df(adata, "CD19+ B", key="scpeft_markers")
    ours = marker_genes_df(adata, group="CD19+ B")
    assert scanpy_table["names"].tolist() == ours["gene"].tolist()
    # the reference group's mean is what the score subtracts
    scores = adata.layers[SCORES_KEY].toarray()
    gene = ours["gene"].iloc[0]
    column = adata.var_names.get_loc(gene)
    labels = adata.obs["bulk_labels"]
    difference = (
        scores[labels == "CD19+ B", column].mean() - scores[labels == "CD14+ Monocyte", column].mean()
    )
    assert ours["score"].iloc[0] == pytest.approx(difference, rel=1e-6)


def test_rank_genes_by_score_refuses_unknown_layer(cells):
    adata = cells.copy()
    with pytest.raises(KeyError, match="layers"):
        rank_genes_by_score(adata, "bulk_labels", SCORES_KEY)


@pytest.mark.slow  # the trained adapter takes minutes; each case itself stops before scoring
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--label-key", "celltype"], "Label column 'celltype' is not in adata.obs"),
        (["--reference", "Platelet"], "--reference 'Platelet' is not a group"),
        (["--attention-layer", "4"], "--attention-layer 4 is out of range: the model has 4 layers"),
        (["--attention-layer", "-5"], "--attention-layer -5 is out of range"),
        (["--adapter", "BROKEN"], "has no config.json"),
        (["--top", "0"], "--top 0 must be at least 1"),
    ],
    ids=["label-key", "reference", "layer", "negative-layer", "base", "top"],
)
def test_markers_bad_input_is_one_line_and_writes_nothing(trained_adapter, tmp_path, capsys, change, message):
    broken = tmp_path / "broken"
    shutil.copytree(trained_adapter / "encoder", broken)
    run_info = json.loads((broken / "run_info.json").read_text())
    (broken / "run_info.json").write_text(json.dumps(run_info | {"base_model": str(tmp_path / "gone")}))
    args = {"--adapter": str(trained_adapter / "encoder"), "--data": str(trained_adapter / "pbmc.h5ad"),
            "--label-key": "bulk_labels", "--out": str(tmp_path / "out" / "markers.csv")}  # fmt: skip
    args.update(dict(zip(change[::2], change[1::2], strict=True)))
    if args["--adapter"] == "BROKEN":
        args["--adapter"] = str(broken)
    code = cli_main(["markers", *[item for pair in args.items() for item in pair]])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # (weight loading prints progress bars)
    assert code == 2 and len(errors) == 1 and errors[0].startswith("scpeft-hf markers: error: ")
    assert message in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_markers_write_all_three_files_or_none(trained_adapter, tmp_path, monkeypatch):
    adata = small_groups_data(trained_adapter)
    out = tmp_path / "m.csv"

    def failing_plot(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr("scpeft_hf.tasks.attention.plot_markers", failing_plot)
    with pytest.raises(RuntimeError, match="plot failed"):
        find_markers(adata, trained_adapter / "encoder", "bulk_labels", out, top=5, method="cls-softmax")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    marker_paths(out)["summary"].write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        find_markers(adata, trained_adapter / "encoder", "bulk_labels", out, top=5)
    assert [path.name for path in tmp_path.iterdir()] == ["m_summary.json"]
