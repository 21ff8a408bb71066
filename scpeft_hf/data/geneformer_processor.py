"""`GeneformerProcessor`: AnnData raw counts → Geneformer's rank-value encoded cells (`datasets.Dataset`).

Per cell, as Geneformer's `TranscriptomeTokenizer` does: total counts `n_counts` (`obs["n_counts"]` when present,
else the sum over all of the AnnData's genes), each dictionary gene's value `count / n_counts * target_sum /
gene_median`, the non-zero genes sorted by that value, highest first, truncated to the model's input size
(V2: `<cls>`, up to `max_length - 2` genes, `<eos>`; V1: up to `max_length` genes, no special tokens).

Tie rule: genes with equal values are ordered by ascending token id. The official tokenizer leaves ties to
`np.argsort`'s unstable quicksort; fixing them by token id makes a cell's tokens independent of the AnnData's
gene order and of the platform.

Genes are matched by Ensembl ID (`var["ensembl_id"]` when that column exists, else the var index; version
suffixes are ignored). Symbol-only data needs a symbol → Ensembl table (Geneformer's `gene_name_id_dict*.pkl`,
a dict, or a two-column table); a table saved with the processor is used by default.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InvalidInputError, MissingFileError
from .collator import GeneformerDataCollator
from .geneformer_dictionaries import (
    DICTIONARY_PATTERNS,
    GeneTable,
    find_dictionary,
    gene_table_frame,
    load_dictionary,
)
from .processing_utils import MODEL_CONFIG_NAME, PROCESSOR_CONFIG_NAME, CellProcessor, select_columns
from .rank_value import cell_totals, check_counts, rank_value_order, truncate, wrap
from .streaming import iter_csr_chunks
from .vocab import ENSEMBL_ID, gene_names, read_gene_table, strip_ensembl_version

logger = logging.getLogger(__name__)

__all__ = ["GeneformerDataCollator", "GeneformerProcessor", "rank_value_order"]

TOKEN_DICTIONARY_NAME = "token_dictionary.json"
MEDIAN_DICTIONARY_NAME = "gene_median_dictionary.json"
GENE_NAME_ID_NAME = "gene_name_id_dictionary.json"


class GeneformerProcessor(CellProcessor):
    """Turns AnnData raw counts into Geneformer inputs; saved next to a model with `save_pretrained`.

    Args:
        token_dictionary: `{ensembl_id: token id}` with the special tokens (`<pad>`, `<mask>`, V2 also `<cls>`,
            `<eos>`), as a dict or an official `.pkl`/`.json` file.
        gene_median_dictionary: `{ensembl_id: non-zero median}` (the normalisation factors), dict or file.
        gene_name_id_dictionary: optional `{symbol: ensembl_id}` used when the AnnData's genes are symbols.
        special_tokens: add `<cls>`/`<eos>` (V2); None decides from the token dictionary (V2 dictionaries have
            `<cls>` and `<eos>`).
        max_length: model input size, special tokens included (V2 4096, V1 2048; default by `special_tokens`).
        target_sum: counts are scaled to this total per cell before the division by medians.
        input_kind: "counts" (or "auto", the same): Geneformer ranks raw counts; anything else is an error.
        gene_column: `var` column with Ensembl IDs; None uses `var["ensembl_id"]` if present, else the index.
        layer / use_raw: read `adata.layers[layer]` or `adata.raw.X` (and `.raw.var`) instead of X; saved.
        label_names: class names, fixed the first time labels are processed and saved.
        chunk_size: cells tokenized at a time (bounds working memory; not saved).
    """

    collator_class = GeneformerDataCollator
    hub_files = (
        PROCESSOR_CONFIG_NAME,
        MODEL_CONFIG_NAME,
        TOKEN_DICTIONARY_NAME,
        MEDIAN_DICTIONARY_NAME,
        GENE_NAME_ID_NAME,
        *(
            f"{pattern}.{ext}"
            for pattern in DICTIONARY_PATTERNS.values()
            for ext in ("pkl", "pickle", "json")
        ),
    )

    def __init__(
        self,
        token_dictionary: Mapping[str, int] | str | os.PathLike,
        gene_median_dictionary: Mapping[str, float] | str | os.PathLike,
        *,
        gene_name_id_dictionary: Mapping[str, str] | str | os.PathLike | None = None,
        special_tokens: bool | None = None,
        max_length: int | None = None,
        target_sum: float = 10_000,
        input_kind: str = "counts",
        gene_column: str | None = None,
        layer: str | None = None,
        use_raw: bool = False,
        label_names: list[str] | None = None,
        pad_token: str = "<pad>",
        cls_token: str = "<cls>",
        eos_token: str = "<eos>",
        chunk_size: int = 1024,
    ):
        self.token_dictionary = load_dictionary(token_dictionary, "token")
        self.gene_median_dictionary = load_dictionary(gene_median_dictionary, "median")
        self.gene_name_id_dictionary = (
            load_dictionary(gene_name_id_dictionary, "gene_name_id")
            if gene_name_id_dictionary is not None
            else None
        )
        if input_kind not in ("counts", "auto"):
            raise InvalidInputError(
                f"input_kind={input_kind!r}: Geneformer ranks raw counts; pass the raw counts "
                f"(layer='counts' or adata.raw.to_adata()) with input_kind='counts'"
            )
        if pad_token not in self.token_dictionary:
            raise InvalidInputError(
                f"token dictionary has no {pad_token!r} token; Geneformer's dictionaries have '<pad>'"
            )
        if special_tokens is None:
            special_tokens = cls_token in self.token_dictionary and eos_token in self.token_dictionary
        if special_tokens and not {cls_token, eos_token} <= self.token_dictionary.keys():
            raise InvalidInputError(
                f"special_tokens=True needs {cls_token!r} and {eos_token!r} in the token dictionary (V2); "
                f"V1 dictionaries have neither: pass special_tokens=False"
            )
        self.special_tokens = bool(special_tokens)
        self.max_length = (
            int(max_length) if max_length is not None else (4096 if self.special_tokens else 2048)
        )
        if self.max_length < 1 + 2 * self.special_tokens:
            raise InvalidInputError(f"max_length={self.max_length} leaves no room for genes")
        if target_sum <= 0:
            raise InvalidInputError(f"target_sum={target_sum} must be positive (Geneformer uses 10,000)")
        self.target_sum = float(target_sum)
        self.input_kind = "counts"
        self._init_common(gene_column, layer, use_raw, label_names, chunk_size)
        self.pad_token, self.cls_token, self.eos_token = pad_token, cls_token, eos_token
        genes = [key for key in self.token_dictionary if key in self.gene_median_dictionary]
        if not genes:
            raise InvalidInputError(
                "the token and gene median dictionaries share no gene; they must come from the same release"
            )
        self._gene_tokens = pd.Series({gene: self.token_dictionary[gene] for gene in genes}, dtype=np.int64)
        self._gene_medians = np.array([self.gene_median_dictionary[gene] for gene in genes], dtype=np.float64)
        if (self._gene_medians <= 0).any():
            raise InvalidInputError(
                "gene median dictionary has non-positive medians; medians are divisors and must be > 0"
            )
        self._median_of_token = pd.Series(self._gene_medians, index=self._gene_tokens.to_numpy())

    # -- ids -----------------------------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        return self.token_dictionary[self.pad_token]

    @property
    def cls_token_id(self) -> int | None:
        return self.token_dictionary[self.cls_token] if self.special_tokens else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_dictionary[self.eos_token] if self.special_tokens else None

    @property
    def max_genes(self) -> int:
        return self.max_length - 2 * self.special_tokens

    @property
    def vocab_size(self) -> int:
        return len(self.token_dictionary)

    # -- saving and loading -------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "special_tokens": self.special_tokens,
            "max_length": self.max_length,
            "target_sum": self.target_sum,
            "input_kind": self.input_kind,
            "pad_token": self.pad_token,
            "cls_token": self.cls_token,
            "eos_token": self.eos_token,
        }

    def _save_files(self, directory: Path) -> None:
        """The dictionaries, as JSON."""
        (directory / TOKEN_DICTIONARY_NAME).write_text(json.dumps(self.token_dictionary, ensure_ascii=False))
        (directory / MEDIAN_DICTIONARY_NAME).write_text(
            json.dumps(self.gene_median_dictionary, ensure_ascii=False)
        )
        if self.gene_name_id_dictionary is not None:
            (directory / GENE_NAME_ID_NAME).write_text(
                json.dumps(self.gene_name_id_dictionary, ensure_ascii=False)
            )

    @classmethod
    def _from_saved(cls, directory: Path, settings: dict, overrides: dict) -> GeneformerProcessor:
        names = directory / GENE_NAME_ID_NAME
        return cls(
            directory / TOKEN_DICTIONARY_NAME,
            directory / MEDIAN_DICTIONARY_NAME,
            gene_name_id_dictionary=names if names.is_file() else None,
            **{**settings, **overrides},
        )

    @classmethod
    def _from_model_folder(cls, directory: Path, model_config: dict, overrides: dict) -> GeneformerProcessor:
        """A Geneformer model folder: `config.json` plus `token_dictionary*` and `gene_median_dictionary*`
        (`.pkl` or `.json`; `gene_name_id_dict*` is optional); `max_length` comes from `max_position_embeddings`
        and the token dictionary must have exactly `vocab_size` tokens."""
        files = {kind: find_dictionary(directory, kind) for kind in DICTIONARY_PATTERNS}
        for kind in ("token", "median"):
            if files[kind] is None:
                raise MissingFileError(
                    f"{directory} has no {DICTIONARY_PATTERNS[kind]}.pkl/.json; copy Geneformer's dictionaries "
                    f"into the model folder, or build the processor with GeneformerProcessor(token_dictionary=..., "
                    f"gene_median_dictionary=...) and save_pretrained() it there"
                )
        processor = cls(
            files["token"],
            files["median"],
            gene_name_id_dictionary=files["gene_name_id"],
            **{"max_length": model_config.get("max_position_embeddings"), **overrides},
        )
        processor.check_vocab_size(model_config.get("vocab_size"), directory / MODEL_CONFIG_NAME)
        return processor

    def check_vocab_size(self, vocab_size: int | None, where: str | os.PathLike = "the model") -> None:
        """Raise unless a model with `vocab_size` embedding rows fits this token dictionary."""
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise InvalidInputError(
                f"{where} has vocab_size {vocab_size:,} but the token dictionary has {self.vocab_size:,} tokens; "
                f"use the dictionary the checkpoint was trained with (V1-10M: 25,426 tokens, V2: 20,275)"
            )

    def __repr__(self) -> str:
        settings = {key: value for key, value in self.to_dict().items() if key != "processor_class"}
        return (
            f"{type(self).__name__}({self.vocab_size:,} tokens, {len(self._gene_tokens):,} genes, {settings})"
        )

    # -- tokenizing ---------------------------------------------------------------------------------------

    def _token_columns(self) -> dict[str, Any]:
        """`input_ids` in rank-value order."""
        return {"input_ids": datasets.List(datasets.Value("int32"))}

    def match_genes(
        self,
        adata: AnnData,
        gene_column: str | None = None,
        gene_table: GeneTable | None = None,
        *,
        layer: str | None = None,
        use_raw: bool | None = None,
    ) -> np.ndarray:
        """Token id of each `var` gene (-1 where it has none in both dictionaries), matched by Ensembl ID.

        The name itself (version suffix ignored) is tried first, then `gene_table` (or the saved symbol →
        Ensembl dictionary). When several genes reach the same Ensembl ID the first in `var` order keeps it.
        """
        _, adata = self._input(adata, layer, use_raw)  # the genes of the selected matrix
        gene_column = self._gene_column(gene_column)
        if gene_column is None and "ensembl_id" in adata.var.columns:
            gene_column = "ensembl_id"
        names = pd.Series(gene_names(adata, gene_column))
        stripped = names.map(strip_ensembl_version)
        token_ids = stripped.map(self._gene_tokens)
        table = gene_table if gene_table is not None else self.gene_name_id_dictionary
        if table is not None:
            pairs = read_gene_table(gene_table_frame(table))
            pairs = pairs.assign(token_id=pairs["alias"].map(self._gene_tokens)).dropna(subset="token_id")
            via_table = stripped.map(pairs.drop_duplicates("name").set_index("name")["token_id"])
            token_ids = token_ids.fillna(via_table)
        token_ids = token_ids.fillna(-1).astype(np.int64)
        token_ids[token_ids.duplicated() & (token_ids >= 0)] = -1
        n_matched = int((token_ids >= 0).sum())
        where = f"var[{gene_column!r}]" if gene_column else "the var index"
        if n_matched == 0:
            looks_ensembl = names.str.match(ENSEMBL_ID).any()
            if not looks_ensembl and table is None:
                raise InvalidInputError(
                    f"AnnData's genes in {where} are not Ensembl IDs (e.g. {', '.join(names[:3])}) and no "
                    f"symbol → Ensembl table was given; Geneformer's dictionaries are keyed by Ensembl ID. Pass "
                    f"gene_table=<Geneformer's gene_name_id_dict.pkl, a {{symbol: ensembl_id}} dict or a "
                    f"two-column table>, or gene_column=<the var column holding Ensembl IDs> "
                    f"(var columns: {list(adata.var.columns)})"
                )
            raise InvalidInputError(
                f"AnnData has 0 of its {len(names):,} genes ({where}, e.g. {', '.join(names[:3])}) in Geneformer's "
                f"token and median dictionaries ({len(self._gene_tokens):,} genes, e.g. "
                f"{', '.join(self._gene_tokens.index[:3])}); check the species and the ID column"
            )
        logger.info("genes: %d/%d of %s matched Geneformer's dictionaries", n_matched, len(names), where)
        return token_ids.to_numpy()

    def __call__(
        self,
        adata: AnnData,
        label_key: str | None = None,
        *,
        layer: str | None = None,
        use_raw: bool | None = None,
        gene_column: str | None = None,
        gene_table: GeneTable | None = None,
    ) -> datasets.Dataset:
        """Tokenize an in-memory AnnData of raw counts into a Dataset, one row per cell in `obs` order.

        `label_key` names the `obs` column with class labels (→ a `labels` ClassLabel column); label names are
        fixed on the first call. `layer`/`use_raw`/`gene_column` replace the saved input selection for this
        call. Cells without any expressed dictionary gene are kept (V2: `<cls>` `<eos>` only, V1: empty) with a
        warning. Nothing is changed when the input is rejected.
        """
        if adata.isbacked:
            raise InvalidInputError(
                "this AnnData is backed on disk; load it into memory (adata.to_memory()) first"
            )
        label_names, labels = self._labels(adata, label_key)
        token_ids = self.match_genes(adata, gene_column, gene_table, layer=layer, use_raw=use_raw)
        adata = self.select_input(adata, layer, use_raw)
        matrix = adata.X
        if matrix is None:
            raise InvalidInputError("AnnData has no X; pass layer=<name of the layer holding the raw counts>")
        matrix = sp.csr_matrix(matrix) if not sp.issparse(matrix) or matrix.format != "csr" else matrix
        n_counts = cell_totals(adata, matrix)
        columns = np.flatnonzero(token_ids >= 0)
        plan = _RankPlan(columns, token_ids[columns], self._median_of_token[token_ids[columns]].to_numpy())
        batches, n_empty = [], 0
        for start, chunk in iter_csr_chunks(matrix, self.chunk_size):
            chunk_labels = labels[start : start + chunk.shape[0]] if labels is not None else None
            batch, empty = self._encode_chunk(
                chunk, n_counts[start : start + chunk.shape[0]], plan, chunk_labels, label_names, start
            )
            batches.append(batch)
            n_empty += empty
        self._fix_labels(label_names)
        kept = "with <cls> <eos> only" if self.special_tokens else "as empty sequences"
        self._warn_empty_cells(n_empty, adata.n_obs, "Geneformer's dictionaries", kept)
        return self._dataset(batches, label_names)

    def _encode_chunk(
        self,
        chunk: sp.csr_matrix,
        n_counts: np.ndarray,
        plan: _RankPlan,
        labels: np.ndarray | None,
        label_names: list[str] | None,
        start: int,
    ) -> tuple[pa.RecordBatch, int]:
        where = f"cells {start}..{start + chunk.shape[0] - 1}"
        check_counts(chunk.data, where)
        matched = select_columns(chunk, plan.columns, chunk.shape[1])
        matched.eliminate_zeros()
        ordered = rank_value_order(
            matched.indptr, plan.token_ids[matched.indices], matched.data, n_counts,
            plan.medians[matched.indices], self.target_sum,
        )  # fmt: skip
        tokens, lengths = truncate(ordered, np.diff(matched.indptr), self.max_genes)
        n_empty = int((lengths == 0).sum())
        if self.special_tokens:
            tokens, lengths = wrap(tokens, lengths, self.cls_token_id, self.eos_token_id)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        arrays = [
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens.astype(np.int32))),
            pa.array(lengths.astype(np.int32)),
        ]
        if labels is not None:
            arrays.append(pa.array(labels))
        return pa.RecordBatch.from_arrays(arrays, schema=self.features(label_names).arrow_schema), n_empty


@dataclass
class _RankPlan:
    columns: np.ndarray  # var indices of the dictionary genes
    token_ids: np.ndarray  # their token ids
    medians: np.ndarray  # their normalisation factors
