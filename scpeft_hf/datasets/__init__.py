"""Real single-cell datasets read out of registry packages (fetched once with `pip download`, then offline)."""

from .archives import DATA_HOME_VARIABLE, data_home
from .catalog import (
    DATASETS,
    baron_pancreas,
    celltypist_sample,
    hlca_lung_query,
    load_dataset,
    orthologs,
    pbmc3k,
    pbmc68k_reduced,
    pbmc_mosaic,
)

__all__ = [
    "DATASETS",
    "DATA_HOME_VARIABLE",
    "baron_pancreas",
    "celltypist_sample",
    "data_home",
    "hlca_lung_query",
    "load_dataset",
    "orthologs",
    "pbmc3k",
    "pbmc68k_reduced",
    "pbmc_mosaic",
]
