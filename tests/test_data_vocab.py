"""GeneVocab: the official vocab.json format, gene matching with fallbacks, the overlap report, errors."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scpeft_hf.data import GeneVocab, strip_ensembl_version
from tests.data_helpers import pbmc, pbmc_vocab

TOKENS = {"TP53": 4, "CD4": 0, "ENSG00000111111": 2, "Gene": 5, "GENE": 6, "CD8A": 1, "MALAT1": 3}
SPECIALS = {"<pad>": 7, "<cls>": 8, "<eoc>": 9}


def _adata(names: list[str], **var_columns) -> ad.AnnData:
    matrix = sp.csr_matrix(np.arange(1, 2 * len(names) + 1, dtype=np.float32).reshape(2, len(names)))
    return ad.AnnData(matrix, var=pd.DataFrame(var_columns, index=names))


def test_official_vocab_file_round_trip(tmp_path):
    # Official files are flat {symbol: id} objects, not sorted by id.
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({**SPECIALS, **TOKENS}))

    vocab = GeneVocab.from_file(path)
    vocab.save(tmp_path / "saved.json")

    assert len(vocab) == 10
    assert (vocab.pad_token_id, vocab.cls_token_id) == (7, 8)
    assert vocab["MALAT1"] == 3 and "CD4" in vocab and "CD19" not in vocab
    assert vocab.lookup(["CD8A", "CD19", "<cls>"]).tolist() == [1, -1, 8]
    assert GeneVocab.from_file(tmp_path / "saved.json") == vocab
    assert list(json.loads((tmp_path / "saved.json").read_text()).values()) == list(range(10))
    with pytest.raises(KeyError, match="'CD19' is not in the vocabulary"):
        vocab["CD19"]


def test_vocab_without_special_tokens_is_rejected():
    with pytest.raises(ValueError, match="no '<cls>' token"):
        GeneVocab({"CD4": 0, "<pad>": 1})


def test_match_order_exact_then_ensembl_then_table_then_case():
    vocab = GeneVocab({**TOKENS, **SPECIALS})
    adata = _adata(["CD4", "cd8a", "ENSG00000111111.7", "ENSG00000141510.16", "gene", "XIST", "Cd4"])
    table = pd.DataFrame({"gene_id": ["ENSG00000141510.17"], "gene_name": ["TP53"]})

    match = vocab.match(adata, gene_table=table)

    assert match.token_ids.tolist() == [0, 1, 2, 4, -1, -1, -1]
    assert match.match_kind.tolist() == [
        "exact",
        "case_insensitive",
        "ensembl_version",
        "gene_table",
        "",
        "",
        "",
    ]
    # "gene" is ambiguous (Gene/GENE); "Cd4" would collide with the exact CD4.
    assert match.n_collisions == 1
    assert (match.n_matched, match.n_genes) == (4, 7)
    assert match.report() == (
        "4/7 genes matched the vocabulary (57.1%; 1 exact, 1 ensembl_version, 1 gene_table, "
        "1 case_insensitive); 1 left out because an earlier gene took the same token; "
        "top unmatched: Cd4, XIST, gene"
    )


def test_gene_table_file_maps_symbols_to_an_ensembl_keyed_vocab(tmp_path):
    vocab = GeneVocab({"ENSG00000141510": 0, "ENSG00000010610": 1, "<pad>": 2, "<cls>": 3})
    table_path = tmp_path / "gencode.tsv"
    table_path.write_text("gene_name\tgene_id\nTP53\tENSG00000141510.17\nCD4\tENSG00000010610.10\n")

    match = vocab.match(_adata(["CD4", "TP53", "ACTB"]), gene_table=table_path)

    assert match.token_ids.tolist() == [1, 0, -1]


def test_top_unmatched_are_ordered_by_expression():
    adata = pbmc()
    match = pbmc_vocab(adata).match(adata)
    unmatched = adata.var_names[::10]
    totals = np.asarray(adata[:, unmatched].X.sum(axis=0)).ravel()

    assert (match.n_matched, match.n_genes) == (688, 765)
    assert match.top_unmatched(3) == list(unmatched[np.argsort(-totals)[:3]])
    assert "688/765 genes matched the vocabulary (89.9%; 688 exact)" in str(match)


def test_gene_column_selects_the_names():
    vocab = GeneVocab({**TOKENS, **SPECIALS})
    adata = _adata(["ENSG1", "ENSG2"], symbol=["TP53", "MALAT1"])

    assert vocab.match(adata, gene_column="symbol").token_ids.tolist() == [4, 3]
    with pytest.raises(
        KeyError, match=r"gene_column='name' is not a var column; var columns are \['symbol'\]"
    ):
        vocab.match(adata, gene_column="name")


def test_no_gene_in_vocab_names_counts_and_the_fix():
    vocab = GeneVocab({**TOKENS, **SPECIALS})
    adata = _adata(["1", "2", "3"], symbol=["TP53", "CD4", "ACTB"])

    with pytest.raises(
        ValueError, match=r"0 of its 3 genes \(the var index, e\.g\. 1, 2, 3\).*10 tokens.*gene_column="
    ):
        vocab.match(adata)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicate_gene_names_are_rejected():
    adata = _adata(["CD4", "TP53", "CD4"])
    with pytest.raises(ValueError, match=r"1 duplicated gene names \(e\.g\. 'CD4'\).*var_names_make_unique"):
        GeneVocab({**TOKENS, **SPECIALS}).match(adata)


@pytest.mark.parametrize(
    ("name", "stripped"),
    [
        ("ENSG00000141510.17", "ENSG00000141510"),
        ("ENSMUSG00000059552.3", "ENSMUSG00000059552"),
        ("ENSG00000141510", "ENSG00000141510"),
        ("CD4.1", "CD4.1"),
    ],
)
def test_strip_ensembl_version(name, stripped):
    assert strip_ensembl_version(name) == stripped
