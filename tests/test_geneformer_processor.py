"""`GeneformerProcessor`: rank-value encoding checked by hand, dictionaries read safely, clear errors."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scpeft_hf.data import (
    GeneformerDataCollator,
    GeneformerProcessor,
    convert_dictionary_to_json,
    load_dictionary,
)
from tests.geneformer_helpers import ensembl_id, toy_dictionaries, write_pickle, write_tiny_geneformer

# 4 genes, token ids 4..7 (after <pad> <mask> <cls> <eos>); medians chosen so that ties appear
TOKENS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{ensembl_id(i): 3 + i for i in range(1, 5)}}
MEDIANS = {ensembl_id(1): 1.0, ensembl_id(2): 2.0, ensembl_id(3): 0.5, ensembl_id(4): 1.0}
COUNTS = np.array(
    [
        [1, 2, 0, 3, 4],  # values 1, 1, -, 3 (÷ n_counts 10): g4 > tie(g1, g2) by token id
        [0, 0, 0, 0, 5],  # no dictionary gene expressed: a zero cell
        [2, 4, 1, 2, 0],  # all four tie: token-id order, then truncation
        [0, 1, 5, 0, 0],  # g3 10/0.5 ... g2 1/2
    ],
    dtype=np.float32,
)


def toy_adata(obs_n_counts: bool = False) -> ad.AnnData:
    # var order differs from token order, and one ID carries a version suffix
    names = [ensembl_id(2), ensembl_id(1), ensembl_id(3), ensembl_id(4) + ".7", "ENSG99999999999"]
    adata = ad.AnnData(sp.csr_matrix(COUNTS[:, [1, 0, 2, 3, 4]]), var=pd.DataFrame(index=names))
    adata.obs["cell_type"] = pd.Categorical(["b", "a", "b", "a"])
    if obs_n_counts:
        adata.obs["n_counts"] = [100.0, 50.0, 9.0, 6.0]
    return adata


def test_rank_value_encoding_matches_a_hand_computed_one_v2():
    processor = GeneformerProcessor(TOKENS, MEDIANS, max_length=6)
    with pytest.warns(UserWarning, match="1 of 4 cells have no expressed gene"):
        dataset = processor(toy_adata(), label_key="cell_type")
    assert processor.special_tokens and processor.max_genes == 4
    assert dataset["input_ids"] == [
        [2, 7, 4, 5, 3],  # g4 (3/1) first; g1 (1/1) and g2 (2/2) tie -> token id order
        [2, 3],  # zero cell: <cls> <eos> only
        [2, 4, 5, 6, 7, 3],  # g1 2/1, g2 4/2, g3 1/0.5, g4 2/1: a four-way tie
        [2, 6, 5, 3],  # g3 5/0.5 = 10 > g2 1/2
    ]
    assert dataset["length"] == [5, 2, 6, 4]
    assert dataset.features["labels"].names == ["a", "b"] and dataset["labels"] == [1, 0, 1, 0]


def test_truncation_keeps_the_top_ranked_genes_and_v1_has_no_special_tokens():
    v2 = GeneformerProcessor(TOKENS, MEDIANS, max_length=4)
    v1 = GeneformerProcessor(TOKENS, MEDIANS, special_tokens=False, max_length=2)
    with pytest.warns(UserWarning):
        assert v2(toy_adata())["input_ids"] == [[2, 7, 4, 3], [2, 3], [2, 4, 5, 3], [2, 6, 5, 3]]
    with pytest.warns(UserWarning, match="empty sequences"):
        assert v1(toy_adata())["input_ids"] == [[7, 4], [], [4, 5], [6, 5]]


def test_n_counts_comes_from_obs_when_present():
    # only the ratio to the cell's total matters within a cell, so read the values back from the ranking:
    # with obs totals the order is unchanged, but cell 0 of a gene matrix with a scaled copy must agree
    processor = GeneformerProcessor(TOKENS, MEDIANS)
    with pytest.warns(UserWarning):
        from_obs = processor(toy_adata(obs_n_counts=True))["input_ids"]
        computed = processor(toy_adata())["input_ids"]
    assert from_obs == computed
    adata = toy_adata(obs_n_counts=True)
    adata.obs.loc[adata.obs_names[0], "n_counts"] = -1.0
    with pytest.raises(ValueError, match="n_counts"):
        processor(adata)


def test_ties_do_not_depend_on_the_gene_order_in_var():
    adata = toy_adata()
    shuffled = adata[:, [3, 0, 4, 2, 1]].copy()
    processor = GeneformerProcessor(TOKENS, MEDIANS)
    with pytest.warns(UserWarning):
        assert processor(shuffled)["input_ids"] == processor(adata)["input_ids"]


def test_pbmc_scale_encoding_matches_a_per_cell_reference():
    from scpeft_hf.datasets import pbmc68k_reduced

    adata = pbmc68k_reduced()[:60].copy()
    table = pd.DataFrame(
        {"symbol": adata.var_names, "ensembl_id": [ensembl_id(i + 1) for i in range(adata.n_vars)]}
    )
    tokens, medians = toy_dictionaries(adata.n_vars)
    processor = GeneformerProcessor(tokens, medians, max_length=100, chunk_size=16)
    encoded = processor(adata, gene_table=table)["input_ids"]
    counts = adata.X.toarray().astype(np.float64)
    n_counts = adata.obs["n_counts"].to_numpy()
    median = np.array([float(medians[g]) for g in table["ensembl_id"]])
    token = np.array([tokens[g] for g in table["ensembl_id"]])
    for cell in range(adata.n_obs):
        nonzero = np.flatnonzero(counts[cell])
        values = counts[cell, nonzero] / n_counts[cell] * 10_000 / median[nonzero]
        ranked = sorted(zip(-values, token[nonzero], strict=True))  # value descending, then token id
        assert encoded[cell] == [2, *[t for _, t in ranked][:98], 3]


def test_symbol_only_anndata_needs_a_mapping_table():
    adata = ad.AnnData(sp.csr_matrix(COUNTS[:, :4]), var=pd.DataFrame(index=["CD3D", "CD4", "MS4A1", "LYZ"]))
    processor = GeneformerProcessor(TOKENS, MEDIANS)
    with pytest.raises(ValueError, match="not Ensembl IDs .* no symbol → Ensembl table"):
        processor(adata)
    mapping = {"CD3D": ensembl_id(1), "CD4": ensembl_id(2), "MS4A1": ensembl_id(3), "LYZ": ensembl_id(4)}
    expected = [[2, 7, 4, 5, 3], [2, 3], [2, 4, 5, 6, 7, 3], [2, 6, 5, 3]]
    with pytest.warns(UserWarning, match="no expressed gene"):
        assert processor(adata, gene_table=mapping)["input_ids"] == expected
    table = pd.DataFrame(
        {"gene_id": [ensembl_id(i) + ".3" for i in (1, 2, 3, 4)], "gene_name": list(mapping)}
    )
    with pytest.warns(UserWarning):
        assert processor(adata, gene_table=table)["input_ids"] == expected
    saved = GeneformerProcessor(TOKENS, MEDIANS, gene_name_id_dictionary=mapping)
    with pytest.warns(UserWarning):
        assert saved(adata)["input_ids"] == expected


def test_ensembl_ids_are_read_from_var_ensembl_id_column():
    adata = toy_adata()
    adata.var["ensembl_id"] = adata.var_names
    adata.var_names = ["B", "A", "C", "D", "E"]
    with pytest.warns(UserWarning):
        assert GeneformerProcessor(TOKENS, MEDIANS)(adata)["input_ids"][0] == [2, 7, 4, 5, 3]


def test_non_integer_values_are_rejected():
    adata = toy_adata()
    adata.X = adata.X * 0.5
    with pytest.raises(ValueError, match="non-integer values"):
        GeneformerProcessor(TOKENS, MEDIANS)(adata)
    with pytest.raises(ValueError, match="raw counts"):
        GeneformerProcessor(TOKENS, MEDIANS, input_kind="log1p")


def test_pickles_with_anything_but_plain_types_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    assert load_dictionary(write_pickle(tmp_path / "ok.pkl", {"a": np.float64(1.5), "b": 2}), "median") == {
        "a": 1.5,
        "b": 2,
    }
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_dictionary(write_pickle(tmp_path / "evil.pkl", {"a": Payload()}), "median")
    with pytest.raises(ValueError, match="refusing to load collections.OrderedDict"):
        from collections import OrderedDict

        load_dictionary(write_pickle(tmp_path / "ordered.pkl", OrderedDict(a=1)), "token")
    with pytest.raises(ValueError, match="entry 'a'"):
        load_dictionary(write_pickle(tmp_path / "set.pkl", {"a": {1, 2}}), "token")
    with pytest.raises(ValueError, match="not a dict"):
        load_dictionary(write_pickle(tmp_path / "list.pkl", [1, 2]), "token")
    with pytest.raises(ValueError, match="not a plain number"):
        load_dictionary(write_pickle(tmp_path / "obj.pkl", {"a": np.array(["x"])[0]}), "median")


def test_pickle_and_json_dictionaries_give_the_same_processor(tmp_path):
    tokens, medians = toy_dictionaries(12)
    token_pkl = write_pickle(tmp_path / "token_dictionary.pkl", tokens)
    median_pkl = write_pickle(tmp_path / "gene_median_dictionary.pkl", medians)
    token_json = convert_dictionary_to_json(token_pkl, tmp_path / "t.json", "token")
    median_json = convert_dictionary_to_json(median_pkl, tmp_path / "m.json", "median")
    assert json.loads(token_json.read_text()) == tokens
    from_pickles = GeneformerProcessor(token_pkl, median_pkl)
    from_json = GeneformerProcessor(token_json, median_json)
    assert from_pickles.to_dict() == from_json.to_dict()
    assert from_pickles.gene_median_dictionary == from_json.gene_median_dictionary


@pytest.mark.parametrize("dictionaries", ["pkl", "json"])
def test_from_model_folder_and_save_load_round_trip(tmp_path, dictionaries):
    folder = write_tiny_geneformer(tmp_path / "gf", 4, max_positions=16, dictionaries=dictionaries)
    processor = GeneformerProcessor.from_pretrained(folder)
    assert processor.max_length == 16 and processor.special_tokens and processor.vocab_size == 8
    with pytest.warns(UserWarning):
        processor(toy_adata(), label_key="cell_type")
    processor.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "processor_config.json").read_text())["processor_class"] == (
        "GeneformerProcessor"
    )
    loaded = GeneformerProcessor.from_pretrained(tmp_path / "saved")
    assert loaded.to_dict() == processor.to_dict() and loaded.label_names == ["a", "b"]
    with pytest.warns(UserWarning):
        assert loaded(toy_adata())["input_ids"] == processor(toy_adata())["input_ids"]


def test_a_model_whose_vocab_size_differs_from_the_token_dictionary_is_rejected(tmp_path):
    folder = write_tiny_geneformer(tmp_path / "gf", 4, dictionaries=None)
    tokens, medians = toy_dictionaries(5)  # one gene more than the model has rows for
    write_pickle(folder / "token_dictionary.pkl", tokens)
    write_pickle(folder / "gene_median_dictionary.pkl", medians)
    with pytest.raises(ValueError, match="vocab_size 8 but the token dictionary has 9 tokens"):
        GeneformerProcessor.from_pretrained(folder)


def test_model_folder_without_dictionaries_says_what_to_copy(tmp_path):
    folder = write_tiny_geneformer(tmp_path / "gf", 4, dictionaries=None)
    with pytest.raises(FileNotFoundError, match="token_dictionary"):
        GeneformerProcessor.from_pretrained(folder)


def test_collator_pads_with_the_pad_id_and_masks_padding():
    processor = GeneformerProcessor(TOKENS, MEDIANS)
    with pytest.warns(UserWarning):
        dataset = processor(toy_adata(), label_key="cell_type")
    batch = GeneformerDataCollator.from_processor(processor)([dataset[i] for i in range(3)])
    assert batch["input_ids"].tolist() == [[2, 7, 4, 5, 3, 0], [2, 3, 0, 0, 0, 0], [2, 4, 5, 6, 7, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [1, 0, 1]
