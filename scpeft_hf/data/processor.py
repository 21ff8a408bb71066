"""`ScGPTProcessor`: AnnData → scGPT model inputs (`datasets.Dataset`), with its settings saved next to the model.

Pipeline per cell, as in the official scGPT tutorials: keep the genes found in the vocabulary (optionally only
the highly variable ones), normalise counts to `normalize_total` over those genes and `log1p` them, bin the
non-zero values per cell (see :mod:`scpeft_hf.data.binning` for the tie rule) and prepend `<cls>`.

The Dataset keeps every expressed gene of a cell (sequences are not cut to `max_length`): the collator
(:class:`~scpeft_hf.data.ScGPTDataCollator`) draws `max_length - 1` genes per over-long cell each time it
builds a batch, so training sees a different subset every epoch and evaluation a fixed one.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anndata
import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from anndata import AnnData
from datasets.table import InMemoryTable

from ..errors import InvalidInputError, MissingFileError, MissingKeyError
from .binning import MAX_CHUNK_ROWS, TieRule, bin_csr_counts, bin_csr_values
from .orthologs import GeneMap, OrthologCoverage, Policy, read_pretrained_genes
from .streaming import atomic_arrow_writer, expression_matrix, file_fingerprint, iter_csr_chunks
from .vocab import GeneMatch, GeneVocab, gene_names

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG_NAME = "processor_config.json"
VOCAB_NAME = "vocab.json"
MODEL_CONFIG_NAME = "config.json"

InputKind = Literal["counts", "log1p", "auto"]


@dataclass
class _GenePlan:
    """Which var columns feed the model, in var order, and their token ids."""

    matched_columns: np.ndarray  # var indices with a token: normalisation totals run over these
    selected: np.ndarray  # boolean over matched_columns: fed to the model (all, or the HVGs)
    token_ids: np.ndarray  # token id of each selected gene
    hvg_genes: list[str] | None


class ScGPTProcessor:
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
        gene_column: `var` column holding the gene names; None for the var index.
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
        if not 1 <= chunk_size <= MAX_CHUNK_ROWS:
            raise InvalidInputError(f"chunk_size={chunk_size} must be between 1 and {MAX_CHUNK_ROWS}")
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
        self.gene_column = gene_column
        self.label_names = list(label_names) if label_names is not None else None
        self.chunk_size = chunk_size
        self.species = species or (gene_map.species if gene_map is not None else None)
        self.gene_map = self._resolve_gene_map(gene_map, ortholog_table, ortholog_policy)
        self.strict = strict
        self.pretrained_genes = pretrained_genes
        self.ortholog_coverage: OrthologCoverage | None = None  # of the last AnnData processed

    def _resolve_gene_map(self, saved: GeneMap | None, table, policy: Policy | None) -> GeneMap | None:
        """The saved map when it fits the species and no other table or policy is asked for, else a new one."""
        if self.species in (None, "human"):
            if table is not None or policy is not None:
                raise InvalidInputError(
                    "an ortholog table or policy needs species= (--species), the species of the cells"
                )
            return None
        keep = (
            saved is not None
            and saved.species == self.species
            and table is None
            and policy in (None, saved.policy)
        )
        return saved if keep else GeneMap.from_table(self.species, table, policy or "sum")

    @property
    def pad_token_id(self) -> int:
        return self.vocab.pad_token_id

    @property
    def cls_token_id(self) -> int:
        return self.vocab.cls_token_id

    # -- saving and loading -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "processor_class": type(self).__name__,
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
            "gene_column": self.gene_column,
            "label_names": self.label_names,
            "pad_token": self.vocab.pad_token,
            "cls_token": self.vocab.cls_token,
            "species": self.species,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `processor_config.json` and `vocab.json` (official format) into `save_directory`."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vocab.save(directory / VOCAB_NAME)
        if self.gene_map is not None:
            self.gene_map.save(directory)
        (directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike, **kwargs) -> ScGPTProcessor:
        """Load a saved processor, or build one from a converted model folder (`config.json` + `vocab.json`).

        From a model folder, `n_bins`, `pad_value`, `mask_value` and `max_seq_len` (→ `max_length`) come
        from `config.json`; everything else keeps its default. Keyword arguments override either source.
        """
        directory = Path(pretrained_path)
        if not directory.is_dir():
            raise MissingFileError(f"{directory} is not a folder; pass the folder given to save_pretrained()")
        if not (directory / VOCAB_NAME).is_file():
            raise MissingFileError(
                f"{directory} has no {VOCAB_NAME}; save the processor or convert the model there"
            )
        config_path = directory / PROCESSOR_CONFIG_NAME
        model_config_path = directory / MODEL_CONFIG_NAME
        if config_path.is_file():
            settings = json.loads(config_path.read_text())
            settings.pop("processor_class", None)
            special = {key: settings.pop(key) for key in ("pad_token", "cls_token") if key in settings}
            saved = {
                "gene_map": GeneMap.load(directory),
                "pretrained_genes": read_pretrained_genes(directory),
            }
            return cls(
                GeneVocab.from_file(directory / VOCAB_NAME, **special), **{**saved, **settings, **kwargs}
            )
        if not model_config_path.is_file():
            raise MissingFileError(
                f"{directory} has neither {PROCESSOR_CONFIG_NAME} nor a model {MODEL_CONFIG_NAME}; "
                f"save a processor there with save_pretrained() or convert an scGPT checkpoint into it"
            )
        model_config = json.loads(model_config_path.read_text())
        vocab = GeneVocab.from_file(directory / VOCAB_NAME)
        for key, vocab_id in (("pad_token_id", vocab.pad_token_id), ("cls_token_id", vocab.cls_token_id)):
            if model_config.get(key, vocab_id) != vocab_id:
                raise InvalidInputError(
                    f"{model_config_path} has {key}={model_config[key]} but {VOCAB_NAME} gives id {vocab_id}; "
                    f"the two files come from different models"
                )
        settings = {
            "n_bins": model_config["n_bins"],
            "pad_value": model_config["pad_value"],
            "mask_value": model_config["mask_value"],
            "max_length": model_config["max_seq_len"],
            "pretrained_genes": read_pretrained_genes(directory),
        }
        return cls(vocab, **{**settings, **kwargs})

    def __repr__(self) -> str:
        settings = {
            key: value for key, value in self.to_dict().items() if key not in ("processor_class", "hvg_genes")
        }
        return f"{type(self).__name__}({self.vocab!r}, {settings})"

    # -- tokenizing ---------------------------------------------------------------------------------------

    def features(self, label_names: list[str] | None = None) -> datasets.Features:
        """Columns of the produced Dataset: `input_ids` (`<cls>` first), `values` (bins), `length`, `labels`."""
        columns = {
            "input_ids": datasets.List(datasets.Value("int32")),
            "values": datasets.List(datasets.Value("int16")),
            "length": datasets.Value("int32"),
        }
        if label_names is not None:
            columns["labels"] = datasets.ClassLabel(names=label_names)
        return datasets.Features(columns)

    def match_genes(
        self, adata: AnnData, gene_column: str | None = None, gene_table: pd.DataFrame | str | None = None
    ) -> GeneMatch:
        """Overlap of the AnnData's genes with the vocabulary (see :meth:`GeneVocab.match`)."""
        adata, gene_column = self._to_human(adata, gene_column, None)
        return self.vocab.match(adata, gene_column, gene_table, case_insensitive=self.species is None)

    def _to_human(
        self, adata: AnnData, gene_column: str | None, layer: str | None
    ) -> tuple[AnnData, str | None]:
        """With a gene map: the AnnData on human genes (var index; `layer` summed in X), else unchanged."""
        gene_column = gene_column or self.gene_column
        if self.gene_map is None:
            return adata, gene_column
        if layer is not None:
            adata = AnnData(X=expression_matrix(adata, layer), obs=adata.obs, var=adata.var)
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
        gene_column: str | None = None,
        gene_table: pd.DataFrame | str | None = None,
    ) -> datasets.Dataset:
        """Tokenize an in-memory AnnData into a Dataset, one row per cell in `obs` order.

        `label_key` names the `obs` column with class labels (→ a `labels` ClassLabel column). Label names
        (the column's categories in their order, or the sorted values, leaving out absent ones) and HVGs are
        fixed on the first call and reused afterwards; a label not seen then is an error.
        Cells without any expressed vocabulary gene are kept with `<cls>` alone, with a warning. With
        `input_kind="auto"` the first chunk of cells decides, and a later chunk that disagrees is an error.
        Nothing is changed (neither the AnnData nor this processor) when the input is rejected.
        """
        if adata.isbacked:
            raise InvalidInputError(
                "this AnnData is backed on disk; use processor.tokenize_h5ad(path) to stream it"
            )
        label_names, labels = self._labels(adata, label_key)
        if self.gene_map is not None:
            adata, gene_column = self._to_human(adata, gene_column, layer)
            layer = None
        matrix = expression_matrix(adata, layer)
        if sp.issparse(matrix) and matrix.format != "csr":
            matrix = matrix.tocsr()
        plan = self._gene_plan(adata, gene_column, gene_table, matrix)
        batches, n_empty = [], 0
        for batch, empty in self._encode_chunks(matrix, plan, labels, label_names, "the AnnData"):
            batches.append(batch)
            n_empty += empty
        self._commit(label_names, plan, n_empty, adata.n_obs)
        schema = self.features(label_names).arrow_schema
        table = pa.Table.from_batches(batches, schema=schema)
        # An explicit fingerprint: datasets would otherwise pickle the whole table to hash it.
        return datasets.Dataset(InMemoryTable(table), fingerprint=uuid.uuid4().hex)

    def tokenize_h5ad(
        self,
        path: str | os.PathLike,
        label_key: str | None = None,
        *,
        layer: str | None = None,
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
            matrix = expression_matrix(adata, layer)
            plan = self._gene_plan(adata, gene_column, gene_table, None)
            settings = {
                **self.to_dict(),
                "label_names": label_names,
                "label_key": label_key,
                "layer": layer,
                "gene_column": gene_column or self.gene_column,
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
                    for batch, empty in self._encode_chunks(matrix, plan, labels, label_names, str(path)):
                        writer.write_batch(batch)
                        n_empty += empty
            self._commit(label_names, plan, n_empty, adata.n_obs)
        finally:
            adata.file.close()
        return datasets.Dataset.from_file(str(cache_file))

    # -- steps ---------------------------------------------------------------------------------------------

    def _labels(self, adata: AnnData, label_key: str | None) -> tuple[list[str] | None, np.ndarray | None]:
        if label_key is None:
            return None, None
        if label_key not in adata.obs.columns:
            raise MissingKeyError(
                f"label_key={label_key!r} is not an obs column; obs columns are {list(adata.obs.columns)} "
                f"(label_key=None tokenizes without labels)"
            )
        labels = adata.obs[label_key]
        missing = labels.isna().to_numpy()
        if missing.any():
            raise InvalidInputError(
                f"obs[{label_key!r}] has {missing.sum()} cells without a label (e.g. {list(adata.obs_names[missing][:3])}); "
                f"drop them first: adata = adata[adata.obs[{label_key!r}].notna()].copy()"
            )
        present = set(labels.astype(str))
        if self.label_names is not None:
            label_names = self.label_names
        elif isinstance(labels.dtype, pd.CategoricalDtype):
            label_names = [str(name) for name in labels.cat.categories if str(name) in present]
        else:
            label_names = sorted(present)
        labels = labels.astype(str).to_numpy()
        unknown = sorted(set(labels) - set(label_names))
        if unknown:
            raise InvalidInputError(
                f"obs[{label_key!r}] has labels this processor was not fitted with: {unknown[:10]} "
                f"(known: {label_names}); drop those cells, or build a new processor (label_names=None) to refit"
            )
        codes = pd.Categorical(labels, categories=label_names).codes.astype(np.int64)
        return label_names, codes

    def _input_kind(self, stored: np.ndarray, where: str) -> Literal["counts", "log1p"]:
        """Check the stored values are usable and resolve `input_kind` for them."""
        # min/max propagate NaN, so two reductions screen for NaN, inf and negatives at once.
        if len(stored) and not (np.isfinite(stored.max()) and stored.min() >= 0):
            finite = np.isfinite(stored)
            problem = (
                f"{(~finite).sum()} NaN/inf values"
                if not finite.all()
                else f"negative values (min {stored.min():.3g})"
            )
            raise InvalidInputError(
                f"{where} has {problem}; scGPT bins non-negative expression: pass raw counts or "
                f"log1p-normalised data (not scaled or centred data such as the output of sc.pp.scale), "
                f"and fill or drop non-finite entries"
            )
        is_integer = all(
            np.array_equal(block, np.rint(block))
            for block in np.split(stored, range(1 << 20, len(stored), 1 << 20))
        )
        if self.input_kind == "counts" and not is_integer:
            fractional = stored[stored != np.rint(stored)]
            hint = (
                "it looks log-normalised (all values below 30)"
                if stored.max() < 30
                else "it looks normalised (non-integer values)"
            )
            raise InvalidInputError(
                f"{where} holds non-integer values (e.g. {fractional[0]:.4g}) but input_kind='counts'; {hint}. "
                f"Pass input_kind='log1p' (--input log1p) for log-normalised data, or give the raw counts (layer='counts' "
                f"or adata.raw.to_adata())"
            )
        if self.input_kind == "log1p" and is_integer and len(stored):
            warnings.warn(
                f"{where} holds only integers but input_kind='log1p'; if these are raw counts, pass "
                f"input_kind='counts' so they are normalised and log1p'd first",
                stacklevel=3,
            )
        if self.input_kind != "auto":
            return self.input_kind
        return "counts" if is_integer else "log1p"

    def _gene_plan(
        self, adata: AnnData, gene_column: str | None, gene_table: pd.DataFrame | str | None, matrix
    ) -> _GenePlan:
        """Genes to tokenize; HVGs are chosen here when needed, from `matrix` (None when streaming)."""
        # Once mapped through orthologs, the genes are the var index (human symbols).
        gene_column = None if self.gene_map is not None else gene_column or self.gene_column
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
            hvg_genes = self._choose_hvgs(matrix, matched_columns, names)
        selected = np.isin(names, hvg_genes) if hvg_genes is not None else np.ones(len(names), dtype=bool)
        if hvg_genes is not None and selected.sum() < len(hvg_genes):
            warnings.warn(
                f"{len(hvg_genes) - selected.sum()} of the {len(hvg_genes)} saved highly variable genes are "
                f"missing from this AnnData (or not in the vocabulary); cells are tokenized without them",
                stacklevel=3,
            )
        return _GenePlan(matched_columns, selected, match.token_ids[matched_columns][selected], hvg_genes)

    def _choose_hvgs(self, matrix, matched_columns: np.ndarray, names: np.ndarray) -> list[str]:
        import scanpy as sc

        values = sp.csr_matrix(matrix[:, matched_columns], dtype=np.float32)
        values.eliminate_zeros()
        if self._input_kind(values.data, "the AnnData's vocabulary genes") == "counts":
            values = self._normalised(values)
        hvg = sc.pp.highly_variable_genes(
            AnnData(values), n_top_genes=self.n_top_genes, flavor="seurat", inplace=False
        )
        chosen = names[hvg["highly_variable"].to_numpy()].tolist()
        logger.info("chose %d highly variable genes of %d vocabulary genes", len(chosen), len(names))
        return chosen

    def _normalised(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        values = counts.copy()
        values.data = self._transform(_row_totals(counts))(rows, counts.data)
        return values

    def _transform(self, totals: np.ndarray):
        """Counts → the values the official pipeline bins, in scanpy's float32 arithmetic."""
        scale = totals.astype(np.float32) / np.float32(self.normalize_total) if self.normalize_total else None

        def transform(rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
            values = counts.astype(np.float32)
            if scale is not None:
                values = values / scale[rows]
            return np.log1p(values) if self.log1p else values

        return transform

    def _encode_chunks(
        self,
        matrix,
        plan: _GenePlan,
        labels: np.ndarray | None,
        label_names: list[str] | None,
        source: str,
    ) -> Iterator[tuple[pa.RecordBatch, int]]:
        """Check and tokenize `matrix` `chunk_size` cells at a time: (record batch, cells without genes)."""
        random_state = np.random.RandomState(self.seed)
        input_kind = None
        for start, chunk in iter_csr_chunks(matrix, self.chunk_size):
            where = f"cells {start}..{start + chunk.shape[0] - 1} of {source}"
            chunk_kind = self._input_kind(chunk.data, where)
            if input_kind is not None and chunk_kind != input_kind:
                raise InvalidInputError(
                    f"{where} look like {chunk_kind} but earlier cells like {input_kind}; "
                    f"pass input_kind='counts' or 'log1p' to say which they hold"
                )
            if input_kind is None and self.input_kind == "auto":
                logger.info(
                    "input_kind='auto': %s are treated as %s (integer-valued or not)", where, chunk_kind
                )
            input_kind = chunk_kind
            chunk_labels = labels[start : start + chunk.shape[0]] if labels is not None else None
            yield self._encode_chunk(chunk, plan, input_kind, chunk_labels, label_names, random_state)

    def _encode_chunk(
        self,
        chunk: sp.csr_matrix,
        plan: _GenePlan,
        input_kind: str,
        labels: np.ndarray | None,
        label_names: list[str] | None,
        random_state: np.random.RandomState,
    ) -> tuple[pa.RecordBatch, int]:
        n_cells = chunk.shape[0]
        matched = _select_columns(chunk, plan.matched_columns, chunk.shape[1])
        # Totals over all vocabulary genes, before any HVG restriction, as the official tutorials normalise.
        totals = _row_totals(matched) if input_kind == "counts" else None
        if not plan.selected.all():
            matched = _select_columns(matched, np.flatnonzero(plan.selected), matched.shape[1])
        indptr, genes, stored = matched.indptr.astype(np.int64), matched.indices, matched.data
        if input_kind == "counts":
            bins = bin_csr_counts(
                indptr, stored, self.n_bins, self._transform(totals), self.ties, random_state
            )
        else:
            bins = bin_csr_values(indptr, stored, self.n_bins, self.ties, random_state)
        row_lengths = np.diff(indptr)
        n_empty = int((row_lengths == 0).sum())
        if self.include_zero_genes:
            n_genes = len(plan.token_ids)
            dense = np.zeros((n_cells, n_genes), dtype=np.int16)
            dense[np.repeat(np.arange(n_cells), row_lengths), genes] = bins
            row_lengths = np.full(n_cells, n_genes, dtype=np.int64)
            token_ids = np.tile(plan.token_ids.astype(np.int32), n_cells)
            bins = dense.ravel()
        else:
            token_ids = plan.token_ids.astype(np.int32)[genes]
        lengths = row_lengths + 1
        offsets = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] > np.iinfo(np.int32).max:
            raise InvalidInputError(f"chunk of {n_cells} cells has {offsets[-1]} tokens; lower chunk_size")
        offsets = pa.array(offsets.astype(np.int32))
        gene_slots = np.ones(len(token_ids) + n_cells, dtype=bool)
        gene_slots[offsets.to_numpy()[:-1]] = False

        def with_cls(cls_entry: int, genes_entries: np.ndarray, dtype: type) -> pa.ListArray:
            tokens = np.full(len(gene_slots), cls_entry, dtype=dtype)
            tokens[gene_slots] = genes_entries
            return pa.ListArray.from_arrays(offsets, pa.array(tokens))

        arrays = [
            with_cls(self.cls_token_id, token_ids, np.int32),
            with_cls(self.cls_value, bins, np.int16),
            pa.array(lengths.astype(np.int32)),
        ]
        if labels is not None:
            arrays.append(pa.array(labels))
        return pa.RecordBatch.from_arrays(arrays, schema=self.features(label_names).arrow_schema), n_empty

    def _commit(self, label_names: list[str] | None, plan: _GenePlan, n_empty: int, n_cells: int) -> None:
        """Keep what was fitted, once the whole input went through."""
        if label_names is not None and self.label_names is None:
            logger.info("fixed %d label names: %s", len(label_names), label_names)
            self.label_names = label_names
        self.hvg_genes = plan.hvg_genes
        if n_empty:
            warnings.warn(
                f"{n_empty} of {n_cells} cells have no expressed gene in the vocabulary; they are kept "
                f"with <cls> alone"
                + (" and zero-valued genes" if self.include_zero_genes else "")
                + ". Drop them first if that is not wanted: sc.pp.filter_cells(adata, min_genes=1)",
                stacklevel=3,
            )


def _row_totals(counts: sp.csr_matrix) -> np.ndarray:
    """Per-row sums of counts, exact (scanpy accumulates in float64; float32 is exact below 2**24)."""
    totals = np.zeros(counts.shape[0])
    occupied = np.diff(counts.indptr) > 0
    if occupied.any():
        starts = counts.indptr[:-1][occupied]
        totals[occupied] = np.add.reduceat(counts.data, starts)
        if totals.max() >= 2**24:
            totals[occupied] = np.add.reduceat(counts.data, starts, dtype=np.float64)
    return totals


def _select_columns(chunk: sp.csr_matrix, columns: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """Keep `columns` (ascending) of a canonical CSR chunk, renumbered 0..len(columns)-1, order kept."""
    if len(columns) == n_columns:
        return chunk
    new_index = np.full(n_columns, -1, dtype=np.int64)
    new_index[columns] = np.arange(len(columns))
    mapped = new_index[chunk.indices]
    keep = mapped >= 0
    kept_before = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return sp.csr_matrix(
        (chunk.data[keep], mapped[keep], kept_before[chunk.indptr]), shape=(chunk.shape[0], len(columns))
    )
