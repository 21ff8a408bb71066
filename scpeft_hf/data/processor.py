"""`ScGPTProcessor`: AnnData → scGPT model inputs (`datasets.Dataset`), with its settings saved next to the model.

Pipeline per cell, as in the official scGPT tutorials: keep the genes found in the vocabulary (optionally only
the highly variable ones), normalise counts to `normalize_total` over those genes and `log1p` them, bin the
non-zero values per cell (see :mod:`scpeft_hf.data.binning` for the tie rule) and prepend `<cls>`.

The Dataset keeps every expressed gene of a cell (sequences are not cut to `max_length`): the collator
(:class:`~scpeft_hf.data.ScGPTDataCollator`) draws `max_length - 1` genes per over-long cell each time it
builds a batch, so training sees a different subset every epoch and evaluation a fixed one.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import anndata
import datasets
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InvalidInputError, MissingFileError
from .binning import TieRule
from .collator import ScGPTDataCollator
from .orthologs import (
    GENE_MAP_NAME,
    PRETRAINED_GENES_NAME,
    GeneMap,
    OrthologCoverage,
    Policy,
    read_pretrained_genes,
)
from .processing_utils import MODEL_CONFIG_NAME, PROCESSOR_CONFIG_NAME, CellProcessor
from .scgpt_encoding import GenePlan, choose_hvgs, encode_chunks
from .streaming import atomic_arrow_writer, file_fingerprint
from .vocab import GeneMatch, GeneVocab, gene_names

logger = logging.getLogger(__name__)

__all__ = ["MODEL_CONFIG_NAME", "PROCESSOR_CONFIG_NAME", "VOCAB_NAME", "ScGPTProcessor"]

VOCAB_NAME = "vocab.json"

InputKind = Literal["counts", "log1p", "auto"]


class ScGPTProcessor(CellProcessor):
    """Turns AnnData into scGPT inputs; `save_pretrained`/`from_pretrained` keep the settings with a model.

    Args:
        vocab: the model's gene vocabulary.
        input_kind: `"counts"` (raw integer counts: normalised and log1p'd here), `"log1p"` (already
            log-normalised: binned as given) or `"auto"` (integer-valued data → counts, other non-negative
            data → log1p; the choice is logged).
        normalize_total: per-cell target sum for counts (scanpy's `normalize_total`); None to skip.
        log1p: apply `log1p` to counts after normalisation.
        n_top_genes: keep only this many highly variable genes (scanpy, flavor "seurat"), chosen on the
            first data processed; the chosen list is saved as `hvg_genes`.
        hvg_genes: an already chosen gene list (names as in `gene_column`).
        n_bins: number of value bins, bin 0 being zero expression (the model's `n_bins`).
        ties: `"deterministic"` (default) or `"random"` (the official tie-breaking, seeded by `seed`); see
            :mod:`scpeft_hf.data.binning`.
        seed: seeds random tie-breaking here and the collator's gene subsampling.
        include_zero_genes: also emit the cell's unexpressed vocabulary genes, with value 0.
        max_length: longest sequence fed to the model, `<cls>` included (the collator subsamples to it).
        cls_value: value given to `<cls>` (0 as in fine-tuning; the official zero-shot embedding uses
            `pad_value`).
        pad_value / mask_value: values of padding and masked positions (the model's config).
        gene_column: `var` column holding the gene names (of `.raw.var` with `use_raw`); None for the var index.
        layer / use_raw: read `adata.layers[layer]` or `adata.raw.X` instead of X (saved, so inference reads
            the same; see :class:`~scpeft_hf.data.processing_utils.CellProcessor`).
        label_names: class names, fixed the first time labels are processed and saved.
        chunk_size: cells tokenized at a time (bounds working memory; not saved).
        species: the cells' species when not human (e.g. `"mouse"`): genes are mapped to human symbols
            through an ortholog table (see :mod:`scpeft_hf.data.orthologs`) and matched case-exactly; the
            resolved map is saved as `gene_map.json`. `"human"` only turns off case-insensitive matching.
        ortholog_table: the table for `species` (a DataFrame or CSV with `source_gene,human_gene[,confidence]`);
            None uses the shipped one, or the map already saved with this processor.
        ortholog_policy: `"sum"` (default) or `"one2one"`.
        gene_map: an already resolved map (`from_pretrained` passes the saved one).
        strict: with `species`, raise instead of warning when under 20% of the expressed genes map (not saved).
        pretrained_genes: genes the base was pretrained on, for the coverage report (read from
            `pretrained_genes.txt` by `from_pretrained`; not saved).
    """

    collator_class = ScGPTDataCollator
    hub_files = (PROCESSOR_CONFIG_NAME, MODEL_CONFIG_NAME, VOCAB_NAME, GENE_MAP_NAME, PRETRAINED_GENES_NAME)

    def __init__(
        self,
        vocab: GeneVocab,
        *,
        input_kind: InputKind = "auto",
        normalize_total: float | None = 1e4,
        log1p: bool = True,
        n_top_genes: int | None = None,
        hvg_genes: list[str] | None = None,
        n_bins: int = 51,
        ties: TieRule = "deterministic",
        seed: int = 0,
        include_zero_genes: bool = False,
        max_length: int = 1200,
        cls_value: int = 0,
        pad_value: int = -2,
        mask_value: int = -1,
        gene_column: str | None = None,
        layer: str | None = None,
        use_raw: bool = False,
        label_names: list[str] | None = None,
        chunk_size: int = 1024,
        species: str | None = None,
        ortholog_table: pd.DataFrame | str | os.PathLike | None = None,
        ortholog_policy: Policy | None = None,
        gene_map: GeneMap | None = None,
        strict: bool = False,
        pretrained_genes: set[str] | None = None,
    ):
        if input_kind not in ("counts", "log1p", "auto"):
            raise InvalidInputError(f"input_kind={input_kind!r}; use 'counts', 'log1p' or 'auto'")
        if ties not in ("deterministic", "random"):
            raise InvalidInputError(
                f"ties={ties!r}; use 'deterministic' or 'random' (the official tie-breaking)"
            )
        if not 3 <= n_bins <= np.iinfo(np.int16).max:
            raise InvalidInputError(f"n_bins={n_bins} must be between 3 and 32767 (scGPT uses 51)")
        if max_length < 2:
            raise InvalidInputError(f"max_length={max_length} leaves no room for genes after <cls>")
        for name, value in (("cls_value", cls_value), ("pad_value", pad_value), ("mask_value", mask_value)):
            if value != int(value) or abs(value) > np.iinfo(np.int16).max:
                raise InvalidInputError(
                    f"{name}={value} must be a small integer, as bins are stored as int16"
                )
        self._init_common(gene_column, layer, use_raw, label_names, chunk_size)
        self.vocab = vocab
        self.input_kind = input_kind
        self.normalize_total = normalize_total
        self.log1p = log1p
        self.n_top_genes = n_top_genes
        self.hvg_genes = list(hvg_genes) if hvg_genes is not None else None
        self.n_bins = n_bins
        self.ties = ties
        self.seed = seed
        self.include_zero_genes = include_zero_genes
        self.max_length = max_length
        self.cls_value = int(cls_value)
        self.pad_value = int(pad_value)
        self.mask_value = int(mask_value)
        self.species = species or (gene_map.species if gene_map is not None else None)
        self.gene_map = GeneMap.for_species(self.species, gene_map, ortholog_table, ortholog_policy)
        self.strict = strict
        self.pretrained_genes = pretrained_genes
        self.ortholog_coverage: OrthologCoverage | None = None  # of the last AnnData processed

    @property
    def pad_token_id(self) -> int:
        return self.vocab.pad_token_id

    @property
    def cls_token_id(self) -> int:
        return self.vocab.cls_token_id

    # -- saving and loading -------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "input_kind": self.input_kind,
            "normalize_total": self.normalize_total,
            "log1p": self.log1p,
            "n_top_genes": self.n_top_genes,
            "hvg_genes": self.hvg_genes,
            "n_bins": self.n_bins,
            "ties": self.ties,
            "seed": self.seed,
            "include_zero_genes": self.include_zero_genes,
            "max_length": self.max_length,
            "cls_value": self.cls_value,
            "pad_value": self.pad_value,
            "mask_value": self.mask_value,
            "pad_token": self.vocab.pad_token,
            "cls_token": self.vocab.cls_token,
            "species": self.species,
        }

    def _save_files(self, directory: Path) -> None:
        """`vocab.json` (official format) and, with a species, `gene_map.json`."""
        self.vocab.save(directory / VOCAB_NAME)
        if self.gene_map is not None:
            self.gene_map.save(directory)

    @classmethod
    def _vocab_file(cls, directory: Path) -> Path:
        if not (directory / VOCAB_NAME).is_file():
            raise MissingFileError(
                f"{directory} has no {VOCAB_NAME}; save the processor or convert the model there"
            )
        return directory / VOCAB_NAME

    @classmethod
    def _from_saved(cls, directory: Path, settings: dict, overrides: dict) -> ScGPTProcessor:
        special = {key: settings.pop(key) for key in ("pad_token", "cls_token") if key in settings}
        saved = {"gene_map": GeneMap.load(directory), "pretrained_genes": read_pretrained_genes(directory)}
        vocab = GeneVocab.from_file(cls._vocab_file(directory), **special)
        return cls(vocab, **{**saved, **settings, **overrides})

    @classmethod
    def _from_model_folder(cls, directory: Path, model_config: dict, overrides: dict) -> ScGPTProcessor:
        """From a converted model: `n_bins`, `pad_value`, `mask_value` and `max_seq_len` (→ `max_length`) come
        from `config.json`; everything else keeps its default. Keyword arguments override either source."""
        vocab = GeneVocab.from_file(cls._vocab_file(directory))
        for key, vocab_id in (("pad_token_id", vocab.pad_token_id), ("cls_token_id", vocab.cls_token_id)):
            if model_config.get(key, vocab_id) != vocab_id:
                raise InvalidInputError(
                    f"{directory / MODEL_CONFIG_NAME} has {key}={model_config[key]} but {VOCAB_NAME} gives id "
                    f"{vocab_id}; the two files come from different models"
                )
        settings = {
            "n_bins": model_config["n_bins"],
            "pad_value": model_config["pad_value"],
            "mask_value": model_config["mask_value"],
            "max_length": model_config["max_seq_len"],
            "pretrained_genes": read_pretrained_genes(directory),
        }
        return cls(vocab, **{**settings, **overrides})

    def __repr__(self) -> str:
        settings = {
            key: value for key, value in self.to_dict().items() if key not in ("processor_class", "hvg_genes")
        }
        return f"{type(self).__name__}({self.vocab!r}, {settings})"

    # -- tokenizing ---------------------------------------------------------------------------------------

    def _token_columns(self) -> dict[str, Any]:
        """`input_ids` (`<cls>` first) and `values` (bins)."""
        return {
            "input_ids": datasets.List(datasets.Value("int32")),
            "values": datasets.List(datasets.Value("int16")),
        }

    def match_genes(
        self,
        adata: AnnData,
        gene_column: str | None = None,
        gene_table: pd.DataFrame | str | None = None,
        *,
        layer: str | None = None,
        use_raw: bool | None = None,
    ) -> GeneMatch:
        """Overlap of the genes of the selected input with the vocabulary (see :meth:`GeneVocab.match`)."""
        adata, gene_column = self._to_human(self.select_input(adata, layer, use_raw), gene_column)
        return self.vocab.match(adata, gene_column, gene_table, case_insensitive=self.species is None)

    def _to_human(self, adata: AnnData, gene_column: str | None) -> tuple[AnnData, str | None]:
        """With a gene map: the AnnData on human genes (var index, counts summed in X), else unchanged."""
        gene_column = self._gene_column(gene_column)
        if self.gene_map is None:
            return adata, gene_column
        human, self.ortholog_coverage = self.gene_map.apply(
            adata, self.vocab.token_to_id, gene_column, self.pretrained_genes, self.strict
        )
        return human, None

    def __call__(
        self,
        adata: AnnData,
        label_key: str | None = None,
        *,
        layer: str | None = None,
        use_raw: bool | None = None,
        gene_column: str | None = None,
        gene_table: pd.DataFrame | str | None = None,
    ) -> datasets.Dataset:
        """Tokenize an in-memory AnnData into a Dataset, one row per cell in `obs` order.

        `label_key` names the `obs` column with class labels (→ a `labels` ClassLabel column). Label names
        (the column's categories in their order, or the sorted values, leaving out absent ones) and HVGs are
        fixed on the first call and reused afterwards; a label not seen then is an error. `layer`/`use_raw`/
        `gene_column` replace the saved input selection for this call.
        Cells without any expressed vocabulary gene are kept with `<cls>` alone, with a warning. With
        `input_kind="auto"` the first chunk of cells decides, and a later chunk that disagrees is an error.
        Nothing is changed (neither the AnnData nor this processor) when the input is rejected.
        """
        if adata.isbacked:
            raise InvalidInputError(
                "this AnnData is backed on disk; use processor.tokenize_h5ad(path) to stream it"
            )
        label_names, labels = self._labels(adata, label_key)
        adata, gene_column = self._to_human(self.select_input(adata, layer, use_raw), gene_column)
        matrix = adata.X
        if matrix is None:
            raise InvalidInputError(
                "AnnData has no X; pass layer=<name of the layer holding the expression values>"
            )
        if sp.issparse(matrix) and matrix.format != "csr":
            matrix = matrix.tocsr()
        plan = self._gene_plan(adata, gene_column, gene_table, matrix)
        batches, n_empty = [], 0
        for batch, empty in encode_chunks(self, matrix, plan, labels, label_names, "the AnnData"):
            batches.append(batch)
            n_empty += empty
        self._commit(label_names, plan, n_empty, adata.n_obs)
        return self._dataset(batches, label_names)

    def tokenize_h5ad(
        self,
        path: str | os.PathLike,
        label_key: str | None = None,
        *,
        layer: str | None = None,
        use_raw: bool | None = None,
        gene_column: str | None = None,
        gene_table: pd.DataFrame | str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> datasets.Dataset:
        """Tokenize an `.h5ad` file chunk by chunk into an on-disk Arrow cache; memory stays bounded.

        The file is opened in backed mode and read `chunk_size` cells at a time; the rows equal those of
        `processor(anndata.read_h5ad(path))`. The cache file (under `cache_dir`, default the `datasets`
        cache) is keyed by the file's path, size and modification time and by the settings, reused when
        present, and only appears once complete. HVG selection must already be fitted (`hvg_genes`).
        With `input_kind="auto"` the first chunk decides; a later chunk that disagrees is an error.
        """
        if self.gene_map is not None:
            raise InvalidInputError(
                f"tokenize_h5ad({path}) streams genes as stored, so species={self.species!r} cannot map them; "
                f"call processor(anndata.read_h5ad(path)) instead"
            )
        adata = anndata.read_h5ad(path, backed="r")
        try:
            label_names, labels = self._labels(adata, label_key)
            matrix, genes = self._input(adata, layer, use_raw)
            plan = self._gene_plan(genes, self._gene_column(gene_column), gene_table, None)
            layer, use_raw = self._input_selection(layer, use_raw)
            settings = {
                **self.to_dict(),
                "label_names": label_names,
                "label_key": label_key,
                "layer": layer,
                "use_raw": use_raw,
                "gene_column": self._gene_column(gene_column),
                "token_ids": plan.token_ids.tolist(),
            }
            cache_root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)
            cache_file = cache_root / "scpeft_hf" / f"scgpt-{file_fingerprint(path, settings)}.arrow"
            n_empty = 0
            if cache_file.is_file():
                logger.info("reusing tokenized cache %s", cache_file)
            else:
                schema = self.features(label_names).arrow_schema
                with atomic_arrow_writer(cache_file, schema) as writer:
                    for batch, empty in encode_chunks(self, matrix, plan, labels, label_names, str(path)):
                        writer.write_batch(batch)
                        n_empty += empty
            self._commit(label_names, plan, n_empty, adata.n_obs)
        finally:
            adata.file.close()
        return datasets.Dataset.from_file(str(cache_file))

    # -- steps ---------------------------------------------------------------------------------------------

    def _gene_plan(
        self, adata: AnnData, gene_column: str | None, gene_table: pd.DataFrame | str | None, matrix
    ) -> GenePlan:
        """Genes to tokenize; HVGs are chosen here when needed, from `matrix` (None when streaming)."""
        # Once mapped through orthologs, the genes are the var index (human symbols).
        gene_column = None if self.gene_map is not None else gene_column
        match = self.vocab.match(adata, gene_column, gene_table, case_insensitive=self.species is None)
        logger.info("genes: %s", match.report())
        matched_columns = np.flatnonzero(match.matched)
        names = gene_names(adata, gene_column)[matched_columns]
        hvg_genes = self.hvg_genes
        if hvg_genes is None and self.n_top_genes is not None:
            if matrix is None:
                raise InvalidInputError(
                    "highly variable genes must be chosen on an in-memory AnnData before streaming: call "
                    "processor(adata_in_memory) once (or set hvg_genes=[...]), then tokenize_h5ad()"
                )
            hvg_genes = choose_hvgs(self, matrix, matched_columns, names)
        selected = np.isin(names, hvg_genes) if hvg_genes is not None else np.ones(len(names), dtype=bool)
        if hvg_genes is not None and selected.sum() < len(hvg_genes):
            warnings.warn(
                f"{len(hvg_genes) - selected.sum()} of the {len(hvg_genes)} saved highly variable genes are "
                f"missing from this AnnData (or not in the vocabulary); cells are tokenized without them",
                stacklevel=3,
            )
        return GenePlan(matched_columns, selected, match.token_ids[matched_columns][selected], hvg_genes)

    def _commit(self, label_names: list[str] | None, plan: GenePlan, n_empty: int, n_cells: int) -> None:
        """Keep what was fitted, once the whole input went through."""
        if label_names is not None and self.label_names is None:
            logger.info("fixed %d label names: %s", len(label_names), label_names)
        self._fix_labels(label_names)
        self.hvg_genes = plan.hvg_genes
        kept = "with <cls> alone" + (" and zero-valued genes" if self.include_zero_genes else "")
        self._warn_empty_cells(n_empty, n_cells, "the vocabulary", kept)
