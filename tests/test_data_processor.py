"""ScGPTProcessor: parity with the official scGPT pipeline, save/load, and rejected inputs."""

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

from scpeft_hf.data import ScGPTProcessor
from scpeft_hf.models.scgpt import ScGPTConfig
from tests.data_helpers import official_scgpt, pbmc, pbmc_vocab


def _padded(dataset, width: int, pad_id: int, pad_value: float) -> tuple[np.ndarray, np.ndarray]:
    input_ids = np.full((len(dataset), width), pad_id, dtype=np.int64)
    values = np.full((len(dataset), width), pad_value, dtype=np.float32)
    for index, row in enumerate(dataset):
        input_ids[index, : row["length"]] = row["input_ids"]
        values[index, : row["length"]] = row["values"]
    return input_ids, values


@pytest.mark.parametrize("include_zero_genes", [False, True])
def test_random_ties_reproduce_the_official_pipeline(monkeypatch, include_zero_genes):
    """Official tutorial steps: keep vocabulary genes, Preprocessor (normalize 1e4, log1p, 51 bins),
    tokenize_and_pad_batch with <cls>; seeded the same way, the token sequences are identical."""
    official = official_scgpt(monkeypatch)
    adata = pbmc()
    vocab = pbmc_vocab(adata)
    in_vocab = adata[:, [gene in vocab for gene in adata.var_names]].copy()
    preprocessor = official.preprocess.Preprocessor(
        use_key="X", normalize_total=1e4, result_normed_key="X_normed", log1p=True, binning=51
    )
    np.random.seed(5)
    preprocessor(in_vocab)
    expected = official.tokenizer.tokenize_and_pad_batch(
        in_vocab.layers["X_binned"],
        np.array([vocab[gene] for gene in in_vocab.var_names]),
        max_len=1000,
        vocab=vocab.token_to_id,
        pad_token="<pad>",
        pad_value=-2,
        append_cls=True,
        include_zero_gene=include_zero_genes,
    )

    processor = ScGPTProcessor(vocab, ties="random", seed=5, include_zero_genes=include_zero_genes)
    dataset = processor(adata)
    input_ids, values = _padded(dataset, expected["genes"].shape[1], vocab.pad_token_id, -2)

    np.testing.assert_array_equal(input_ids, expected["genes"].numpy())
    np.testing.assert_array_equal(values, expected["values"].numpy())
    assert max(dataset["length"]) == (689 if include_zero_genes else expected["genes"].shape[1])


def test_deterministic_ties_follow_the_documented_rule_on_real_cells(monkeypatch):
    official = official_scgpt(monkeypatch)
    adata = pbmc()[:100]
    vocab = pbmc_vocab(adata)
    in_vocab = adata[:, [gene in vocab for gene in adata.var_names]].copy()
    official.preprocess.Preprocessor(use_key="X", normalize_total=1e4, log1p=True)(in_vocab)
    log_values = in_vocab.layers["X_log1p"].toarray()

    dataset = ScGPTProcessor(vocab)(adata)

    n_ties = 0
    for row, cell in zip(log_values, dataset, strict=True):
        nonzero = row[row > 0]
        edges = np.quantile(nonzero, np.linspace(0, 1, 50))
        hi, right = np.digitize(nonzero, edges), np.digitize(nonzero, edges, right=True)
        lo = np.minimum(right + 1, hi)
        np.testing.assert_array_equal(cell["values"][1:], (lo + hi + 1) // 2)
        n_ties += int((hi - right > 1).sum())
    assert n_ties > 1000  # the rule is exercised, not only the tie-free case


def test_save_and_load_give_identical_datasets(tmp_path):
    adata = pbmc()
    processor = ScGPTProcessor(pbmc_vocab(adata), n_top_genes=200, max_length=300, seed=3)
    first = processor(adata, label_key="bulk_labels")
    processor.save_pretrained(tmp_path)

    loaded = ScGPTProcessor.from_pretrained(tmp_path)
    second = loaded(adata, label_key="bulk_labels")

    assert first.data.table.equals(second.data.table)
    assert first.features == second.features
    assert loaded.to_dict() == processor.to_dict()
    assert len(loaded.hvg_genes) == 200 and max(first["length"]) <= 201
    saved_names = json.loads((tmp_path / "processor_config.json").read_text())["label_names"]
    assert saved_names == adata.obs["bulk_labels"].cat.categories.tolist()
    # The saved label mapping holds for data that only has some of the labels.
    cd34 = adata[adata.obs["bulk_labels"] == "CD34+"]
    assert set(loaded(cd34, label_key="bulk_labels")["labels"]) == {saved_names.index("CD34+")}


def test_a_converted_model_folder_gives_its_settings(tmp_path):
    vocab = pbmc_vocab(pbmc())
    config = ScGPTConfig(
        vocab_size=len(vocab),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        pad_token_id=vocab.pad_token_id,
        cls_token_id=vocab.cls_token_id,
        n_bins=31,
        max_seq_len=300,
        pad_value=-3,
    )
    config.save_pretrained(tmp_path)
    vocab.save(tmp_path / "vocab.json")

    processor = ScGPTProcessor.from_pretrained(tmp_path, seed=9)

    assert (processor.n_bins, processor.max_length, processor.pad_value, processor.mask_value) == (
        31,
        300,
        -3,
        -1,
    )
    assert processor.seed == 9 and processor.vocab == vocab
    assert max(max(values) for values in processor(pbmc()[:50])["values"]) == 30

    config.pad_token_id = 0
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pad_token_id=0 but vocab.json gives id 688"):
        ScGPTProcessor.from_pretrained(tmp_path)


def test_auto_input_kind_is_logged(caplog):
    adata = pbmc()[:50]
    processor = ScGPTProcessor(pbmc_vocab(adata))
    with caplog.at_level(logging.INFO, logger="scpeft_hf.data"):
        processor(adata)
        log_normalised = adata.copy()
        log_normalised.X = sp.csr_matrix(np.log1p(adata.X.toarray() / 7))
        processor(log_normalised)
    assert "treated as counts" in caplog.text and "treated as log1p" in caplog.text


def test_cls_value_and_labels():
    adata = pbmc()
    dataset = ScGPTProcessor(pbmc_vocab(adata), cls_value=-2)(adata, label_key="louvain")
    assert {values[0] for values in dataset["values"]} == {-2}
    # A categorical column keeps its category order ("10" after "9", not after "1").
    assert dataset.features["labels"].names == [str(name) for name in range(11)]
    assert dataset.features["labels"].int2str(dataset["labels"]) == adata.obs["louvain"].astype(str).tolist()


# -- rejected inputs: a clear message, and neither the processor nor the AnnData changed ------------------


def _rejects(processor: ScGPTProcessor, adata, error, match: str, **kwargs) -> None:
    settings, matrix = processor.to_dict(), adata.X.copy()
    with pytest.raises(error, match=match):
        processor(adata, **kwargs)
    assert processor.to_dict() == settings
    assert np.array_equal(adata.X.data, matrix.data, equal_nan=True)
    assert np.array_equal(adata.X.indices, matrix.indices)


def test_zero_vocabulary_genes_are_an_error():
    adata = pbmc()
    adata.var_names = [f"gene{index}" for index in range(adata.n_vars)]
    _rejects(
        ScGPTProcessor(pbmc_vocab(pbmc())),
        adata,
        ValueError,
        r"AnnData has 0 of its 765 genes .* \(691 tokens.*pass gene_column=",
        label_key="bulk_labels",
    )


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [(np.nan, "1 NaN/inf values"), (np.inf, "1 NaN/inf values"), (-1.0, "negative values")],
)
def test_nan_inf_and_negative_values_are_errors(bad_value, message):
    adata = pbmc()
    adata.X.data[1234] = bad_value
    _rejects(
        ScGPTProcessor(pbmc_vocab(adata)),
        adata,
        ValueError,
        message + ".*non-negative expression",
        label_key="bulk_labels",
    )


def test_log_normalised_data_declared_as_counts_gets_a_hint():
    adata = pbmc()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    _rejects(
        ScGPTProcessor(pbmc_vocab(adata), input_kind="counts"),
        adata,
        ValueError,
        r"non-integer values .* input_kind='counts'; it looks log-normalised.*input_kind='log1p'",
    )


def test_missing_or_incomplete_label_column_is_an_error():
    adata = pbmc()
    processor = ScGPTProcessor(pbmc_vocab(adata))
    _rejects(
        processor,
        adata,
        KeyError,
        r"label_key='celltype' is not an obs column; obs columns are \['bulk_labels'",
        label_key="celltype",
    )
    adata.obs["partial"] = adata.obs["bulk_labels"].astype(object)
    adata.obs.loc[adata.obs_names[:3], "partial"] = None
    _rejects(processor, adata, ValueError, r"3 cells without a label.*notna", label_key="partial")


def test_unknown_labels_at_inference_are_an_error():
    adata = pbmc()
    processor = ScGPTProcessor(pbmc_vocab(adata))
    processor(adata[adata.obs["bulk_labels"] != "Dendritic"], label_key="bulk_labels")
    _rejects(
        processor,
        adata,
        ValueError,
        r"labels this processor was not fitted with: \['Dendritic'\]",
        label_key="bulk_labels",
    )


def test_duplicate_gene_names_are_an_error():
    adata = pbmc()
    adata.var_names = ["CD3E"] + list(adata.var_names[1:-1]) + ["CD3E"]
    _rejects(ScGPTProcessor(pbmc_vocab(pbmc())), adata, ValueError, "duplicated gene names")


def test_cells_without_expressed_vocabulary_genes_keep_only_cls():
    adata = pbmc()[:30].copy()
    vocab = pbmc_vocab(adata)
    counts = adata.X.toarray()
    counts[[4, 17]] = 0
    adata.X = sp.csr_matrix(counts)

    with pytest.warns(
        UserWarning,
        match="2 of 30 cells have no expressed gene in the vocabulary; they are kept with <cls> alone",
    ):
        dataset = ScGPTProcessor(vocab)(adata)

    assert dataset[4]["input_ids"] == [vocab.cls_token_id] and dataset[4]["values"] == [0]
    assert dataset["length"][17] == 1 and dataset["length"][5] > 1


@pytest.mark.filterwarnings("ignore:.*cells have no expressed gene")
def test_saved_highly_variable_genes_missing_from_new_data_are_reported():
    adata = pbmc()
    processor = ScGPTProcessor(pbmc_vocab(adata), hvg_genes=["CD3E", "NKG7", "NOT_A_GENE"])

    with pytest.warns(UserWarning, match="1 of the 3 saved highly variable genes are missing"):
        dataset = processor(adata)

    assert max(dataset["length"]) == 3  # <cls> + CD3E + NKG7


def test_explicitly_stored_zeros_are_not_expressed_genes():
    adata = pbmc()[:40].copy()
    adata.X.data[::7] = 0  # stored, but zero
    cleaned = adata.copy()
    cleaned.X.eliminate_zeros()
    vocab = pbmc_vocab(adata)

    assert ScGPTProcessor(vocab)(adata)[:] == ScGPTProcessor(vocab)(cleaned)[:]
    assert adata.X.nnz > cleaned.X.nnz  # the caller's matrix is left as it was
