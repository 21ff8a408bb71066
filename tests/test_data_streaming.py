"""Streaming tokenization of .h5ad files (backed mode, row chunks) into an Arrow cache."""

import numpy as np
import pytest

from scpeft_hf.data import ScGPTProcessor
from tests.data_helpers import pbmc, pbmc_vocab


@pytest.fixture
def h5ad_path(tmp_path):
    path = tmp_path / "pbmc.h5ad"
    pbmc().write_h5ad(path)
    return path


def _cache_files(directory) -> list[str]:
    return sorted(path.name for path in directory.rglob("*") if path.is_file())


@pytest.mark.parametrize("ties", ["deterministic", "random"])
def test_streaming_equals_in_memory(h5ad_path, tmp_path, ties):
    adata = pbmc()
    in_memory = ScGPTProcessor(pbmc_vocab(adata), ties=ties, seed=2)(adata, label_key="bulk_labels")
    processor = ScGPTProcessor(pbmc_vocab(adata), ties=ties, seed=2, chunk_size=128)

    streamed = processor.tokenize_h5ad(h5ad_path, label_key="bulk_labels", cache_dir=tmp_path / "cache")

    assert streamed.data.table.equals(in_memory.data.table)
    assert streamed.features == in_memory.features
    assert streamed.cache_files[0]["filename"].startswith(str(tmp_path / "cache"))
    assert processor.label_names == in_memory.features["labels"].names


def test_dense_h5ad_streams_like_sparse(tmp_path):
    adata = pbmc()
    expected = ScGPTProcessor(pbmc_vocab(adata))(adata)
    adata.X = adata.X.toarray()
    adata.write_h5ad(tmp_path / "dense.h5ad")

    streamed = ScGPTProcessor(pbmc_vocab(adata), chunk_size=300).tokenize_h5ad(
        tmp_path / "dense.h5ad", cache_dir=tmp_path / "cache"
    )

    assert streamed.data.table.equals(expected.data.table)


def test_cache_is_reused_and_keyed_by_settings(h5ad_path, tmp_path):
    cache = tmp_path / "cache"
    vocab = pbmc_vocab(pbmc())
    first = ScGPTProcessor(vocab).tokenize_h5ad(h5ad_path, "bulk_labels", cache_dir=cache)
    written = first.cache_files[0]["filename"]
    modified = (cache / "scpeft_hf" / written.rsplit("/", 1)[1]).stat().st_mtime_ns

    fresh = ScGPTProcessor(vocab)
    again = fresh.tokenize_h5ad(h5ad_path, "bulk_labels", cache_dir=cache)
    other = ScGPTProcessor(vocab, n_bins=21).tokenize_h5ad(h5ad_path, cache_dir=cache)

    assert again.cache_files[0]["filename"] == written
    assert fresh.label_names == first.features["labels"].names  # a cache hit still fixes the label names
    assert (cache / "scpeft_hf" / written.rsplit("/", 1)[1]).stat().st_mtime_ns == modified
    assert other.cache_files[0]["filename"] != written
    assert max(max(values) for values in other["values"]) == 20


def test_a_bad_chunk_leaves_no_cache_file(tmp_path):
    adata = pbmc()
    adata.X[650, 3] = np.nan  # in the last of the 128-cell chunks
    adata.write_h5ad(tmp_path / "bad.h5ad")
    processor = ScGPTProcessor(pbmc_vocab(adata), chunk_size=128)

    with pytest.raises(ValueError, match=r"cells 640\.\.699 of .*bad\.h5ad has 1 NaN/inf values"):
        processor.tokenize_h5ad(tmp_path / "bad.h5ad", label_key="bulk_labels", cache_dir=tmp_path / "cache")

    assert _cache_files(tmp_path / "cache") == []
    assert processor.label_names is None


def test_highly_variable_genes_must_be_chosen_before_streaming(h5ad_path, tmp_path):
    adata = pbmc()
    processor = ScGPTProcessor(pbmc_vocab(adata), n_top_genes=100)
    with pytest.raises(ValueError, match=r"highly variable genes must be chosen on an in-memory AnnData"):
        processor.tokenize_h5ad(h5ad_path, cache_dir=tmp_path / "cache")

    in_memory = processor(adata[:300])
    streamed = processor.tokenize_h5ad(h5ad_path, cache_dir=tmp_path / "cache")

    assert streamed[:300] == in_memory[:]
    assert len(streamed[0]["input_ids"]) <= 101


def test_auto_input_kind_must_hold_for_every_chunk(tmp_path):
    adata = pbmc()
    adata.X[600:] = adata.X[600:].multiply(0.5).tocsr()  # later cells no longer integer-valued
    adata.write_h5ad(tmp_path / "mixed.h5ad")

    with pytest.raises(
        ValueError, match=r"cells 512\.\.639 .* look like log1p but earlier cells like counts"
    ):
        ScGPTProcessor(pbmc_vocab(adata), chunk_size=128).tokenize_h5ad(
            tmp_path / "mixed.h5ad", cache_dir=tmp_path / "cache"
        )
