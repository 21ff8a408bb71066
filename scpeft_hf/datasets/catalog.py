"""Real single-cell datasets shipped inside registry packages (DESIGN.md §6), returned as AnnData with raw integer
counts in `X`, unique gene symbols in `var_names`, `obs["cell_type"]` where labelled and `obs["donor"]`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InvalidInputError, MissingFileError
from .archives import Archive, extract_member, is_cached

PBMC68K_FILE = "10x_pbmc68k_reduced.h5ad"

CAME = Archive(
    "came", "0.1.13", "came-0.1.13-py3-none-any.whl",
    "7fdb1a65006ca668e0cab51576a09bf540f074346e5f120ec654cd4f91627f7d", "MIT",
)  # fmt: skip
DESC = Archive(
    "desc", "2.1.1", "desc-2.1.1-py3-none-any.whl",
    "402094571549d0557273bfe2d9411c2cd041f1e3221d335da2d6c0d7de1fa91d", "MIT",
)  # fmt: skip
SCARCHES = Archive(
    "scArches", "0.6.1", "scArches-0.6.1.tar.gz",
    "187463c25781d5c5586c129ad137d96327a9f8604d530a696d5f568a9225d77c", "BSD-3-Clause",
)  # fmt: skip
CELLTYPIST = Archive(
    "celltypist", "1.7.1", "celltypist-1.7.1-py3-none-any.whl",
    "3953f96a4476ed1dd2807446d97d3945e8905bbdac6bfef0d20b84a9a00d1101", "MIT",
)  # fmt: skip
SCMIDAS = Archive(
    "scmidas", "0.3.0", "scmidas-0.3.0-py3-none-any.whl",
    "24df81372decc6d3edf6c2481d7b0c58f4685386d2ac938564946916f1bd9522", "MIT",
)  # fmt: skip
CAME_SAMPLE_ZIP = "came/sample_data.zip"
ORTHOLOG_FILES = {"one2one": "gene_matches_1v1_human2mouse.csv", "all": "gene_matches_human2mouse.csv"}


def pbmc68k_reduced() -> anndata.AnnData:
    """scanpy's bundled 700 PBMCs with exact integer UMI counts recovered, and their 10 `bulk_labels`.

    Source: scanpy (BSD-3-Clause), `scanpy/datasets/10x_pbmc68k_reduced.h5ad`, installed with scanpy. Its
    `raw.X` holds `log1p(counts / n_counts * 1e4)` for 765 genes; counts come back as
    `round(expm1(raw.X) * n_counts / 1e4)` (CSR, float32). `obs` keeps the file's columns (`bulk_labels`,
    `louvain`, `n_counts`, ...) plus `cell_type` (a copy of `bulk_labels`) and `donor` (one 10x donor,
    "pbmc68k"). Raises if the recovered values are not integers.
    """
    import scanpy

    path = Path(scanpy.__file__).parent / "datasets" / PBMC68K_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; reinstall scanpy (the file ships inside its wheel)")
    with warnings.catch_warnings():
        # The file predates `obsp` and anndata's encoding metadata; anndata says so while reading it.
        warnings.filterwarnings("ignore", message="Moving element from .uns", category=FutureWarning)
        warnings.filterwarnings("ignore", category=anndata.OldFormatWarning)
        source = anndata.read_h5ad(path)
    log_normalised = sp.csr_matrix(source.raw.X, dtype=np.float64)
    totals = source.obs["n_counts"].to_numpy(dtype=np.float64)
    rows = np.repeat(np.arange(source.n_obs), np.diff(log_normalised.indptr))
    unrounded = np.expm1(log_normalised.data) * totals[rows] / 1e4
    near_integer = np.abs(unrounded - np.round(unrounded)) <= 0.05
    if near_integer.mean() < 0.9999:
        raise InvalidInputError(
            f"{path}: only {100 * near_integer.mean():.3f}% of expm1(raw.X) * n_counts / 1e4 lie within 0.05 of "
            f"an integer (99.99% expected), so counts cannot be recovered; the file differs from scanpy's"
        )
    counts = sp.csr_matrix(
        (np.round(unrounded).astype(np.float32), log_normalised.indices, log_normalised.indptr),
        shape=log_normalised.shape,
    )
    counts.eliminate_zeros()
    counts.sort_indices()  # the file stores each row's genes in descending order
    obs = source.obs.copy()
    obs["cell_type"] = obs["bulk_labels"].copy()
    obs["donor"] = pd.Categorical(["pbmc68k"] * source.n_obs)
    return anndata.AnnData(X=counts, obs=obs, var=source.raw.var.copy())


def baron_pancreas(species: str = "human") -> anndata.AnnData:
    """Baron et al. 2016 pancreas (inDrop, GEO GSE84133): 2,142 human cells (4 donors, 14 types) or 1,886 mouse
    cells (2 donors, 13 types), raw counts, gene symbols.

    Source: CAME 0.1.13 (MIT), `came/sample_data.zip` -> `raw-Baron_{human,mouse}.h5ad`. `cell_type` is the
    file's `cell_type1` (e.g. beta, alpha, ductal); `donor` is the donor (human1-4 / mouse1-2); `library` and
    `cell_ontology_class` are kept as they are.
    """
    if species not in ("human", "mouse"):
        raise InvalidInputError(f"baron_pancreas(species={species!r}): choose 'human' or 'mouse'")
    adata = _read_from_came_zip(f"raw-Baron_{species}.h5ad")
    adata.obs["cell_type"] = adata.obs["cell_type1"].astype("category")
    adata.obs["donor"] = adata.obs["donor"].astype("category")
    return _finish(adata)


def pbmc3k() -> anndata.AnnData:
    """10x Genomics' 2,700 PBMCs of one donor (raw counts, 32,738 genes), unlabelled.

    Source: DESC 2.1.1 (MIT), `desc/datasets/pbmc.h5ad`. `var["gene_ids"]` keeps the Ensembl ids; `donor` is
    "pbmc3k".
    """
    adata = anndata.read_h5ad(extract_member(DESC, "desc/datasets/pbmc.h5ad"))
    adata.var = adata.var[["gene_ids"]].copy()
    adata.obs = pd.DataFrame({"donor": pd.Categorical(["pbmc3k"] * adata.n_obs)}, index=adata.obs_names)
    return _finish(adata)


def hlca_lung_query() -> anndata.AnnData:
    """1,786 human lung cells (Delorey et al. 2021, the Human Lung Cell Atlas mapping tutorial's query),
    raw counts, unlabelled.

    Source: scArches 0.6.1 (BSD-3-Clause) sdist, `notebooks/HLCA_query.h5ad`. Genes are Ensembl ids in the file;
    `var_names` are its `gene_names` symbols made unique, with `var["gene_ids"]`. The file records no donor:
    `donor` holds its source dataset ("delorey_regev").
    """
    adata = anndata.read_h5ad(extract_member(SCARCHES, "scArches-0.6.1/notebooks/HLCA_query.h5ad"))
    adata.var = pd.DataFrame(
        {"gene_ids": adata.var_names.to_numpy()}, index=adata.var["gene_names"].to_numpy()
    )
    adata.obs = pd.DataFrame(
        {"donor": pd.Categorical(adata.obs["dataset"].str.replace("test_dataset_", "", regex=False))},
        index=adata.obs_names,
    )
    return _finish(adata)


def celltypist_sample() -> anndata.AnnData:
    """CellTypist's 559-cell human sample (raw counts, 32,786 genes), unlabelled.

    Source: celltypist 1.7.1 (MIT), `celltypist/data/samples/sample_cell_by_gene.csv`; values within 1e-6 of an
    integer are rounded. `donor` is "celltypist_sample".
    """
    path = extract_member(CELLTYPIST, "celltypist/data/samples/sample_cell_by_gene.csv")
    table = pd.read_csv(path, index_col=0)
    values = table.to_numpy(dtype=np.float64)
    if np.abs(values - np.round(values)).max() > 1e-6:
        raise InvalidInputError(f"{path}: values are not counts")
    counts = sp.csr_matrix(np.round(values).astype(np.float32))
    obs = pd.DataFrame(
        {"donor": pd.Categorical(["celltypist_sample"] * len(table))}, index=table.index.astype(str)
    )
    return _finish(anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=table.columns.astype(str))))


def pbmc_mosaic() -> anndata.AnnData:
    """scMIDAS' 1,200-cell PBMC quick-start set, RNA modality only: raw counts of 500 highly variable genes,
    8 cell types, 3 batches.

    Source: scmidas 0.3.0 (MIT), `scmidas/data/quickstart_pbmc_mosaic.h5mu` (`mod/rna`). `cell_type` is its
    `celltype`; `donor` is its `batch`.
    """
    import h5py
    from anndata.io import read_elem

    with h5py.File(extract_member(SCMIDAS, "scmidas/data/quickstart_pbmc_mosaic.h5mu"), "r") as handle:
        adata = anndata.AnnData(
            X=sp.csr_matrix(read_elem(handle["mod/rna/X"]), dtype=np.float32),
            obs=read_elem(handle["mod/rna/obs"]),
            var=read_elem(handle["mod/rna/var"]),
        )
    adata.obs = pd.DataFrame(
        {
            "cell_type": adata.obs["celltype"].astype("category"),
            "donor": adata.obs["batch"].astype(str).astype("category"),
        },
        index=adata.obs_names,
    )
    return _finish(adata)


def orthologs(species: str = "mouse", kind: str = "one2one") -> pd.DataFrame:
    """Human <-> `species` gene orthologs (Ensembl BioMart, via CAME 0.1.13, MIT): 16,597 one-to-one pairs
    (`kind="one2one"`: each symbol appears once on each side; 7 of them are Ensembl one2many pairs whose other
    partners CAME dropped) or 23,778 pairs including one-to-many and many-to-many (`kind="all"`).

    Columns: `source_gene` (the species' symbol), `human_gene`, `homology_type` (ortholog_one2one, ...),
    `confidence` (Ensembl's orthology confidence, 0 low / 1 high), `gene_order_conservation` and
    `genome_alignment_coverage`.
    """
    if species != "mouse":
        raise InvalidInputError(
            f"orthologs(species={species!r}): only 'mouse' ships offline; pass your own table "
            f"(columns source_gene,human_gene[,confidence]) for other species"
        )
    if kind not in ORTHOLOG_FILES:
        raise InvalidInputError(f"orthologs(kind={kind!r}): choose 'one2one' or 'all'")
    import io
    import zipfile

    from .archives import fetch_archive

    with (
        zipfile.ZipFile(fetch_archive(CAME)) as wheel,
        zipfile.ZipFile(io.BytesIO(wheel.read(CAME_SAMPLE_ZIP))) as z,
    ):
        table = pd.read_csv(io.BytesIO(z.read(ORTHOLOG_FILES[kind])))
    table = table.rename(
        columns={
            "gene.name": "source_gene",
            "human.gene.name": "human_gene",
            "human.homology.type": "homology_type",
            "human.orthology.confidence..0.low..1.high.": "confidence",
            "human.gene.order.conservation.score": "gene_order_conservation",
            "human.whole.genome.alignment.coverage": "genome_alignment_coverage",
        }
    )
    columns = ["source_gene", "human_gene", "homology_type", "confidence", "gene_order_conservation"]
    return table[columns + ["genome_alignment_coverage"]].dropna(subset=["source_gene", "human_gene"])


def _read_from_came_zip(name: str) -> anndata.AnnData:
    import io
    import zipfile

    from .archives import data_home, fetch_archive

    target = data_home() / "files" / f"{CAME.package}-{CAME.version}" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(fetch_archive(CAME)) as wheel:
            with zipfile.ZipFile(io.BytesIO(wheel.read(CAME_SAMPLE_ZIP))) as samples:
                partial = target.with_name(f".{name}.partial")
                partial.write_bytes(samples.read(name))
                partial.replace(target)
    return anndata.read_h5ad(target)


def _finish(adata: anndata.AnnData) -> anndata.AnnData:
    """Canonical CSR float32 integer counts and unique gene symbols."""
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    counts.eliminate_zeros()
    counts.sort_indices()
    if counts.nnz and not np.all(counts.data == np.round(counts.data)):
        raise InvalidInputError("the shipped matrix is not integer counts")
    adata.X = counts
    adata.var_names = adata.var_names.astype(str)
    adata.var_names_make_unique()
    adata.obs_names = adata.obs_names.astype(str)
    return adata


@dataclass(frozen=True)
class DatasetInfo:
    """One entry of `scpeft-hf datasets list`."""

    name: str
    loader: Callable[[], anndata.AnnData]
    cells: int
    genes: int
    labels: str
    licence: str
    source: str
    archive: Archive | None

    @property
    def cached(self) -> bool:
        return self.archive is None or is_cached(self.archive)


DATASETS = {
    info.name: info
    for info in (
        DatasetInfo("pbmc68k-reduced", pbmc68k_reduced, 700, 765, "cell_type (10)", "BSD-3-Clause", "scanpy", None),
        DatasetInfo("baron-human", lambda: baron_pancreas("human"), 2142, 20125, "cell_type (14)", "MIT", "came 0.1.13", CAME),
        DatasetInfo("baron-mouse", lambda: baron_pancreas("mouse"), 1886, 14877, "cell_type (13)", "MIT", "came 0.1.13", CAME),
        DatasetInfo("pbmc3k", pbmc3k, 2700, 32738, "-", "MIT", "desc 2.1.1", DESC),
        DatasetInfo("hlca-lung-query", hlca_lung_query, 1786, 33567, "-", "BSD-3-Clause", "scArches 0.6.1 (sdist)", SCARCHES),
        DatasetInfo("celltypist-sample", celltypist_sample, 559, 32786, "-", "MIT", "celltypist 1.7.1", CELLTYPIST),
        DatasetInfo("pbmc-mosaic", pbmc_mosaic, 1200, 500, "cell_type (8)", "MIT", "scmidas 0.3.0", SCMIDAS),
    )
}  # fmt: skip


def load_dataset(name: str) -> anndata.AnnData:
    """The dataset `name` as listed by `scpeft-hf datasets list`."""
    if name not in DATASETS:
        raise InvalidInputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name].loader()
