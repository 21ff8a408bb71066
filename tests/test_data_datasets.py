"""The offline PBMC dataset: counts recovered from scanpy's bundled log-normalised file."""

import numpy as np
import scanpy as sc
import scipy.sparse as sp

from scpeft_hf.datasets import pbmc68k_reduced


def test_pbmc68k_counts_are_integers_that_reproduce_the_shipped_log_data():
    adata = pbmc68k_reduced()

    assert adata.shape == (700, 765)
    assert sp.isspmatrix_csr(adata.X) and adata.X.has_canonical_format
    assert np.all(adata.X.data == np.round(adata.X.data)) and adata.X.data.min() >= 1
    assert adata.obs["bulk_labels"].nunique() == 10
    assert adata.var_names[:3].tolist() == ["HES4", "TNFRSF4", "SSU72"]
    # Normalising by the file's n_counts and log1p'ing gives back raw.X (stored as float32).
    shipped = sc.datasets.pbmc68k_reduced().raw.X.toarray()
    renormalised = np.log1p(adata.X.toarray() / adata.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(renormalised, shipped, atol=1e-3)
    assert int(adata.X.sum()) == 486_651


# The registry datasets (DESIGN.md §6): fetched once into SCPEFT_DATA_HOME, then read offline.

import hashlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from scpeft_hf import datasets  # noqa: E402
from scpeft_hf.datasets.archives import Archive, fetch_archive  # noqa: E402
from scpeft_hf.errors import HubConnectionError, InvalidInputError  # noqa: E402


def _assert_counts(adata):
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert np.all(adata.X.data == np.round(adata.X.data)) and adata.X.data.min() >= 1
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    assert "donor" in adata.obs


def test_baron_human_has_its_four_donors_and_fourteen_types():
    adata = datasets.baron_pancreas("human")
    _assert_counts(adata)
    assert adata.shape == (2142, 20125)
    assert adata.obs["donor"].value_counts().to_dict() == {
        "human3": 914,
        "human1": 472,
        "human2": 450,
        "human4": 306,
    }
    assert adata.obs["cell_type"].nunique() == 14 and (adata.obs["cell_type"] == "beta").sum() == 623
    assert "library" in adata.obs and {"INS", "GCG", "SST", "PPY", "PRSS1", "KRT19"} <= set(adata.var_names)
    # insulin is the beta cells' gene: their mean INS count is orders of magnitude above the acinar cells'
    ins = adata[:, "INS"].X.toarray().ravel()
    assert ins[adata.obs["cell_type"] == "beta"].mean() > 50 * ins[adata.obs["cell_type"] == "acinar"].mean()


def test_baron_mouse_has_two_donors():
    adata = datasets.baron_pancreas("mouse")
    _assert_counts(adata)
    assert adata.shape == (1886, 14877)
    assert adata.obs["donor"].value_counts().to_dict() == {"mouse2": 1064, "mouse1": 822}
    assert adata.obs["cell_type"].nunique() == 13 and "Ins1" in adata.var_names


def test_unlabelled_human_sets_have_symbols_and_a_donor():
    pbmc = datasets.pbmc3k()
    _assert_counts(pbmc)
    assert pbmc.shape == (2700, 32738) and pbmc.var["gene_ids"].iloc[0].startswith("ENSG")
    lung = datasets.hlca_lung_query()
    _assert_counts(lung)
    assert lung.shape == (1786, 33567)
    assert not lung.var_names[0].startswith("ENSG") and lung.var["gene_ids"].iloc[0].startswith("ENSG")
    assert set(lung.obs["donor"]) == {"delorey_regev"}


def test_pbmc68k_has_cell_type_and_donor():
    adata = datasets.pbmc68k_reduced()
    assert (adata.obs["cell_type"] == adata.obs["bulk_labels"]).all() and set(adata.obs["donor"]) == {
        "pbmc68k"
    }


def test_mouse_orthologs_one_to_one_and_all():
    one = datasets.orthologs("mouse", kind="one2one")
    every = datasets.orthologs("mouse", kind="all")
    assert len(one) == 16597 and len(every) == 23778
    # CAME's one-to-one file keeps 7 one2many pairs whose partners it dropped: still one-to-one as a table
    assert (one["homology_type"] == "ortholog_one2one").sum() == 16590
    assert not one["source_gene"].duplicated().any() and not one["human_gene"].duplicated().any()
    insulin = every[every["human_gene"] == "INS"]["source_gene"]
    assert {"Ins1", "Ins2"} <= set(insulin)
    with pytest.raises(InvalidInputError, match="only 'mouse' ships offline"):
        datasets.orthologs("zebrafish")


def test_a_cached_archive_with_another_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPEFT_DATA_HOME", str(tmp_path))
    archive = Archive("fake", "1.0", "fake-1.0-py3-none-any.whl", "0" * 64, "MIT")
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / archive.filename).write_bytes(b"not the release")
    with pytest.raises(InvalidInputError, match="delete it and fetch again"):
        fetch_archive(archive)


def test_an_empty_cache_without_a_registry_says_how_to_fill_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPEFT_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_INDEX", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setattr("scpeft_hf.datasets.archives.PYPI_SIMPLE", "http://127.0.0.1:9/simple")
    content = b"x"
    archive = Archive(
        "came", "0.0.0", "came-0.0.0-py3-none-any.whl", hashlib.sha256(content).hexdigest(), "MIT"
    )
    with pytest.raises(HubConnectionError, match=r"pip download --no-deps came==0.0.0 -d DIR"):
        fetch_archive(archive)
    assert list((tmp_path / "archives").iterdir()) == []  # nothing half-downloaded is left


def test_cli_lists_and_gets_a_dataset(tmp_path):
    cli = [sys.executable, "-m", "scpeft_hf.cli", "datasets"]
    listing = subprocess.run([*cli, "list"], capture_output=True, text=True, check=True).stdout
    assert "baron-human" in listing and "BSD-3-Clause" in listing and "cached" in listing
    out = tmp_path / "baron.h5ad"
    subprocess.run(
        [*cli, "get", "baron-mouse", "--out", str(out)], capture_output=True, text=True, check=True
    )
    import anndata

    saved = anndata.read_h5ad(out)
    assert saved.shape == (1886, 14877) and "cell_type" in saved.obs
    again = subprocess.run([*cli, "get", "baron-mouse", "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    unknown = subprocess.run(
        [*cli, "get", "nope", "--out", str(tmp_path / "n.h5ad")], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "unknown dataset 'nope'" in unknown.stderr
    assert not (tmp_path / "n.h5ad").exists()
    assert pd.Index(["baron-human"]).isin(list(datasets.DATASETS)).all()
