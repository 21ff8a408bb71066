"""Ortholog mapping on hand-made tables: each policy's map, summed counts, the tie rule and the coverage numbers."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scpeft_hf.data import GeneVocab, ScGPTProcessor
from scpeft_hf.data.orthologs import GENE_MAP_NAME, GeneMap, read_ortholog_table, resolve_pairs
from scpeft_hf.errors import InvalidInputError, MissingFileError, ScpeftUserError

SOURCE_GENES = ["Ins1", "Ins2", "Gcg", "Prss2", "Try4", "Cd4", "Actb", "Zfp1", "Gm123"]
COUNTS = np.array(
    [
        [5, 3, 0, 2, 4, 1, 10, 1, 0],
        [0, 7, 2, 0, 0, 0, 5, 0, 0],
        [1, 0, 0, 1, 0, 2, 0, 3, 0],
    ],
    dtype=np.float32,
)
# Ins1/Ins2 -> INS (many-to-one); Prss2 has two orthologs of equal confidence (tie -> PRSS1, alphabetically
# first); Try4's best ortholog PRSS2 (confidence 1) beats PRSS1 (0) but is not in the vocabulary; Cd4 has no row.
TABLE = pd.DataFrame(
    [
        ("Ins1", "INS", 1),
        ("Ins2", "INS", 1),
        ("Gcg", "GCG", 1),
        ("Prss2", "PRSS2", 0),
        ("Prss2", "PRSS1", 0),
        ("Try4", "PRSS1", 0),
        ("Try4", "PRSS2", 1),
        ("Actb", "ACTB", 1),
        ("Zfp1", "ZNF1", 1),
    ],
    columns=["source_gene", "human_gene", "confidence"],
)
VOCAB = GeneVocab({"ACTB": 0, "CD4": 1, "GCG": 2, "INS": 3, "PRSS1": 4, "<pad>": 5, "<cls>": 6})


def mouse_cells() -> ad.AnnData:
    obs = pd.DataFrame({"cell_type": ["beta", "alpha", "ductal"]}, index=["c0", "c1", "c2"])
    return ad.AnnData(X=sp.csr_matrix(COUNTS), obs=obs, var=pd.DataFrame(index=SOURCE_GENES))


def test_policies_resolve_the_table_exactly():
    pairs = read_ortholog_table(TABLE)
    assert resolve_pairs(pairs, "one2one") == {"Gcg": "GCG", "Actb": "ACTB", "Zfp1": "ZNF1"}
    assert resolve_pairs(pairs, "sum") == {
        "Ins1": "INS",
        "Ins2": "INS",
        "Gcg": "GCG",
        "Prss2": "PRSS1",  # tie on confidence 0: alphabetically first
        "Try4": "PRSS2",  # highest confidence wins, in the vocabulary or not
        "Actb": "ACTB",
        "Zfp1": "ZNF1",
    }
    # Without a confidence column every pair ties: the alphabetically first human symbol.
    no_confidence = read_ortholog_table(TABLE[["source_gene", "human_gene"]])
    assert resolve_pairs(no_confidence, "sum")["Try4"] == "PRSS1"


def test_sum_policy_sums_counts_and_reports_coverage():
    gene_map = GeneMap.from_table("mouse", TABLE, "sum")
    human, coverage = gene_map.apply(mouse_cells(), VOCAB.token_to_id, pretrained_genes={"INS", "ACTB"})
    assert human.var_names.tolist() == ["ACTB", "GCG", "INS", "PRSS1"]
    np.testing.assert_array_equal(human.X.toarray(), [[10, 0, 8, 2], [5, 2, 7, 0], [0, 0, 1, 1]])
    assert human.obs["cell_type"].tolist() == ["beta", "alpha", "ductal"]
    assert coverage.as_dict() == {
        "source_genes": 9,
        "mapped": 7,
        "in_vocabulary": 5,  # Ins1, Ins2, Gcg, Prss2, Actb
        "pretrained": 3,  # Ins1, Ins2, Actb
        "human_genes": 4,
        "expressed_genes": 8,
        "expressed_mapped": 7,
        "counts_kept": pytest.approx(36 / 47),
    }
    assert "7 mapped to a human ortholog" in coverage.report() and "76.6% of counts kept" in coverage.report()


def test_one2one_policy_keeps_only_unique_pairs():
    human, coverage = GeneMap.from_table("mouse", TABLE, "one2one").apply(mouse_cells(), VOCAB.token_to_id)
    assert human.var_names.tolist() == ["ACTB", "GCG"]
    np.testing.assert_array_equal(human.X.toarray(), [[10, 0], [5, 2], [0, 0]])
    assert (coverage.mapped, coverage.in_vocabulary, coverage.human_genes) == (3, 2, 2)
    assert coverage.pretrained is None and "pretrained unknown" in coverage.report()
    assert coverage.counts_kept == pytest.approx(17 / 47)


def test_log1p_input_is_summed_as_expression_not_as_logs():
    cells = mouse_cells()
    cells.X = sp.csr_matrix(np.log1p(COUNTS))
    human, _ = GeneMap.from_table("mouse", TABLE, "sum").apply(cells, VOCAB.token_to_id)
    np.testing.assert_allclose(human.X.toarray()[0], np.log1p([10, 0, 8, 2]), rtol=1e-6)


def test_processor_with_species_tokenizes_the_mapped_genes_without_case_folding():
    processor = ScGPTProcessor(VOCAB, species="mouse", ortholog_table=TABLE)
    # The same cells written directly on the summed human genes tokenize to the same rows.
    human = ad.AnnData(
        X=sp.csr_matrix(np.array([[10, 0, 8, 2], [5, 2, 7, 0], [0, 0, 1, 1]], dtype=np.float32)),
        var=pd.DataFrame(index=["ACTB", "GCG", "INS", "PRSS1"]),
    )
    expected = ScGPTProcessor(VOCAB)(human)
    assert processor(mouse_cells()).to_dict() == expected.to_dict()
    assert processor.match_genes(mouse_cells()).counts_by_kind()["case_insensitive"] == 0
    # Without species, today's behaviour: Gcg, Cd4, Actb match GCG, CD4, ACTB case-insensitively.
    today = ScGPTProcessor(VOCAB).match_genes(mouse_cells())
    assert today.token_ids.tolist() == [-1, -1, 2, -1, -1, 1, 0, -1, -1]


def test_species_human_turns_off_case_insensitive_matching():
    cells = ad.AnnData(X=sp.csr_matrix(np.ones((2, 2), np.float32)), var=pd.DataFrame(index=["INS", "Cd4"]))
    assert ScGPTProcessor(VOCAB).match_genes(cells).n_matched == 2
    assert ScGPTProcessor(VOCAB, species="human").match_genes(cells).n_matched == 1


def test_gene_map_is_saved_and_applied_without_the_table(tmp_path):
    processor = ScGPTProcessor(VOCAB, species="mouse", ortholog_table=TABLE, ortholog_policy="sum")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / GENE_MAP_NAME).read_text())
    assert (saved["species"], saved["policy"], saved["mapping"]["Prss2"]) == ("mouse", "sum", "PRSS1")
    assert saved["table_fingerprint"] == GeneMap.from_table("mouse", TABLE).table_fingerprint
    reloaded = ScGPTProcessor.from_pretrained(tmp_path)
    assert reloaded.gene_map == processor.gene_map
    assert reloaded(mouse_cells()).to_dict() == processor(mouse_cells()).to_dict()
    # A different table gives a different fingerprint; asking for another policy re-resolves the table.
    changed = TABLE.assign(confidence=[1, 1, 1, 0, 0, 0, 1, 1, 0])
    assert GeneMap.from_table("mouse", changed).table_fingerprint != saved["table_fingerprint"]
    one2one = ScGPTProcessor.from_pretrained(tmp_path, ortholog_table=TABLE, ortholog_policy="one2one")
    assert one2one.gene_map.policy == "one2one" and len(one2one.gene_map.mapping) == 3


def test_user_csv_table(tmp_path):
    path = tmp_path / "orthologs.csv"
    TABLE.to_csv(path, index=False)
    gene_map = GeneMap.from_table("pig", path, "sum")
    assert gene_map.table_source == "orthologs.csv"
    assert gene_map.mapping == resolve_pairs(read_ortholog_table(TABLE), "sum")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert isinstance(error.value, ScpeftUserError) and "\n" not in message
    return message


def test_unknown_species_without_a_table():
    with pytest.raises(InvalidInputError) as error:
        ScGPTProcessor(VOCAB, species="zebrafish")
    assert "'zebrafish'" in one_line(error) and "--ortholog-table" in one_line(error)


def test_table_with_wrong_columns(tmp_path):
    with pytest.raises(InvalidInputError) as error:
        GeneMap.from_table("mouse", TABLE.rename(columns={"human_gene": "human"}))
    assert "human_gene" in one_line(error)
    with pytest.raises(MissingFileError):
        GeneMap.from_table("mouse", tmp_path / "absent.csv")


def test_zero_genes_mapped():
    cells = ad.AnnData(X=sp.csr_matrix(np.ones((2, 2), np.float32)), var=pd.DataFrame(index=["Foo", "Bar"]))
    with pytest.raises(InvalidInputError) as error:
        ScGPTProcessor(VOCAB, species="mouse", ortholog_table=TABLE)(cells)
    assert "0 of the AnnData's 2 genes" in one_line(error)


def test_under_a_fifth_of_expressed_genes_mapped_warns_or_fails_when_strict():
    names = ["Ins1", *(f"Unknown{i}" for i in range(5))]  # 1 of 6 expressed genes mapped: 16.7%
    cells = ad.AnnData(X=sp.csr_matrix(np.ones((2, 6), np.float32)), var=pd.DataFrame(index=names))
    with pytest.warns(UserWarning, match="only 16.7% of the 6 expressed genes"):
        ScGPTProcessor(VOCAB, species="mouse", ortholog_table=TABLE)(cells)
    with pytest.raises(InvalidInputError) as error:
        ScGPTProcessor(VOCAB, species="mouse", ortholog_table=TABLE, strict=True)(cells)
    assert "--strict" in one_line(error)


def test_ensembl_ids_with_a_symbol_table():
    ids = ["ENSMUSG00000035804.5", "ENSMUSG00000000381"]
    cells = ad.AnnData(X=sp.csr_matrix(np.ones((2, 2), np.float32)), var=pd.DataFrame(index=ids))
    with pytest.raises(InvalidInputError) as error:
        ScGPTProcessor(VOCAB, species="mouse", ortholog_table=TABLE)(cells)
    assert "Ensembl ids" in one_line(error)
    # A table keyed by Ensembl ids maps them (versions stripped).
    table = pd.DataFrame(
        {"source_gene": ["ENSMUSG00000035804", "ENSMUSG00000000381"], "human_gene": ["INS", "GCG"]}
    )
    human, coverage = GeneMap.from_table("mouse", table).apply(cells, VOCAB.token_to_id)
    assert human.var_names.tolist() == ["GCG", "INS"] and coverage.in_vocabulary == 2


def test_policy_without_species_is_refused():
    with pytest.raises(InvalidInputError):
        ScGPTProcessor(VOCAB, ortholog_policy="one2one")
    with pytest.raises(InvalidInputError):
        GeneMap.from_table("mouse", TABLE, "many")
