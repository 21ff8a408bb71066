"""What `ScGPTProcessor` and `GeneformerProcessor` share: which matrix and gene names they read (X, a layer or
`.raw`; `gene_column`), labels, `processor_config.json` I/O from local folders and Hub repos, `push_to_hub`, and
the collator that batches their output.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from anndata import AnnData
from datasets.table import InMemoryTable
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from transformers.utils import PushToHubMixin
from transformers.utils.doc import copy_func

from ..errors import HubConnectionError, InvalidInputError, MissingFileError, MissingKeyError
from .binning import MAX_CHUNK_ROWS
from .streaming import expression_matrix

PROCESSOR_CONFIG_NAME = "processor_config.json"
MODEL_CONFIG_NAME = "config.json"
# Passed on by transformers' AutoProcessor (or pipelines); a cell processor has no use for them.
IGNORED_LOADING_KWARGS = (
    "trust_remote_code",
    "_from_auto",
    "_from_pipeline",
    "code_revision",
    "proxies",
    "user_agent",
)


class CellProcessor(PushToHubMixin):
    """Base of the cell processors: AnnData → a `datasets.Dataset` of token rows, saved next to a model.

    Subclasses set `collator_class`, `hub_files` (the file patterns `from_pretrained` downloads from a Hub repo),
    and implement `_settings`, `_save_files`, `_from_saved`, `_from_model_folder` and `_token_columns`.

    Why `PushToHubMixin` and not `transformers.ProcessorMixin`: `ProcessorMixin` is a container of
    sub-processors (`attributes` = tokenizer, image processor, ...), each saved and reloaded through its own
    Auto class, and builds `processor_config.json` from them. A cell processor has no sub-processor: the gene
    vocabulary (or Geneformer's dictionaries) is a plain file, and tokenizing needs the AnnData, not text. The
    mixin asks only for `save_pretrained` and gives `push_to_hub` (repo creation, model card, one commit), while
    `processor_class` in `processor_config.json` is all `AutoProcessor.from_pretrained` needs (see `data/auto.py`).

    Input selection, saved in `processor_config.json` so that inference reads what training read:
    `gene_column` (`var` column with the gene names; None for the var index), `layer` (read
    `adata.layers[layer]` instead of X) or `use_raw` (read `adata.raw.X` and the genes of `adata.raw.var`, as
    scanpy's `use_raw`). `layer` and `use_raw` exclude each other.
    """

    collator_class: ClassVar[type]
    hub_files: ClassVar[tuple[str, ...]] = (PROCESSOR_CONFIG_NAME, MODEL_CONFIG_NAME)

    def _init_common(
        self,
        gene_column: str | None,
        layer: str | None,
        use_raw: bool,
        label_names: list[str] | None,
        chunk_size: int,
    ) -> None:
        if layer is not None and use_raw:
            raise InvalidInputError(
                f"layer={layer!r} and use_raw=True both name the expression matrix; pass one of them"
            )
        if not 1 <= chunk_size <= MAX_CHUNK_ROWS:
            raise InvalidInputError(f"chunk_size={chunk_size} must be between 1 and {MAX_CHUNK_ROWS}")
        self.gene_column = gene_column
        self.layer = layer
        self.use_raw = bool(use_raw)
        self.label_names = list(label_names) if label_names is not None else None
        self.chunk_size = chunk_size

    # -- saving and loading -------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _save_files(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _from_saved(cls, directory: Path, settings: dict, overrides: dict) -> CellProcessor:
        raise NotImplementedError

    @classmethod
    def _from_model_folder(cls, directory: Path, model_config: dict, overrides: dict) -> CellProcessor:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The settings written to `processor_config.json` (`processor_class` names the class to load them with)."""
        return {
            "processor_class": type(self).__name__,
            **self._settings(),
            "gene_column": self.gene_column,
            "layer": self.layer,
            "use_raw": self.use_raw,
            "label_names": self.label_names,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the processor's files and then `processor_config.json` into `save_directory`.

        Keyword arguments are accepted for `push_to_hub`, which passes model-only ones (`max_shard_size`).
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        (directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        subfolder: str = "",
        **kwargs,
    ) -> CellProcessor:
        """Load a saved processor, or build one from a model folder, from a local folder or a Hub repo id.

        A Hub repo (`owner/name`, at `revision`) is read through the Hugging Face cache; only the processor's files
        are downloaded, never the weights. Other keyword arguments override saved settings; the ones
        `AutoProcessor` passes along (`trust_remote_code`, ...) are ignored.
        """
        for key in IGNORED_LOADING_KWARGS:
            kwargs.pop(key, None)
        directory = resolve_folder(
            pretrained_model_name_or_path,
            cls.hub_files,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            subfolder=subfolder,
        )
        config_path = directory / PROCESSOR_CONFIG_NAME
        if config_path.is_file():
            settings = json.loads(config_path.read_text())
            saved_class = settings.pop("processor_class", cls.__name__)
            if saved_class != cls.__name__:
                raise InvalidInputError(
                    f"{config_path} holds a {saved_class}, not a {cls.__name__}; load it with "
                    f"{saved_class}.from_pretrained() or transformers.AutoProcessor.from_pretrained()"
                )
            return cls._from_saved(directory, settings, kwargs)
        model_config_path = directory / MODEL_CONFIG_NAME
        if not model_config_path.is_file():
            raise MissingFileError(
                f"{directory} has neither {PROCESSOR_CONFIG_NAME} nor a model {MODEL_CONFIG_NAME}; save a processor "
                f"there with save_pretrained(), or convert a model into it"
            )
        return cls._from_model_folder(directory, json.loads(model_config_path.read_text()), kwargs)

    # -- input selection ------------------------------------------------------------------------------------

    def with_input(
        self, *, layer: str | None = None, use_raw: bool | None = None, gene_column: str | None = None
    ) -> CellProcessor:
        """Replace the saved input selection with the one given (None keeps a setting); returns the processor."""
        self.layer, self.use_raw = self._input_selection(layer, use_raw)
        if gene_column is not None:
            self.gene_column = gene_column
        return self

    def _input_selection(self, layer: str | None, use_raw: bool | None) -> tuple[str | None, bool]:
        """(layer, use_raw) for one call: a layer or `use_raw=True` given replaces the saved choice."""
        if use_raw and layer is not None:
            raise InvalidInputError(
                f"layer={layer!r} and use_raw=True both name the expression matrix; pass one of them"
            )
        if use_raw:
            return None, True
        if layer is not None:
            return layer, False
        return self.layer, False if use_raw is False else self.use_raw

    def _input(self, adata: AnnData, layer: str | None, use_raw: bool | None) -> tuple[Any, AnnData]:
        """(expression matrix, AnnData whose `var` names its columns) for the selected input; backed files too."""
        layer, use_raw = self._input_selection(layer, use_raw)
        if not use_raw:
            return expression_matrix(adata, layer), adata
        if adata.raw is None:
            raise MissingKeyError(
                "use_raw=True but the AnnData has no .raw; set adata.raw (e.g. adata.raw = adata before scaling), "
                "or read X (use_raw=False) or a layer (layer='counts')"
            )
        return adata.raw.X, AnnData(obs=pd.DataFrame(index=adata.obs_names), var=adata.raw.var)

    def select_input(self, adata: AnnData, layer: str | None = None, use_raw: bool | None = None) -> AnnData:
        """The in-memory AnnData as this processor reads it: X is the selected matrix (X, the saved or given
        `layer`, or `.raw.X`), `var` its genes, `obs` the cells'. Unchanged when X is the input."""
        matrix, genes = self._input(adata, layer, use_raw)
        if matrix is adata.X and genes is adata:
            return adata
        return AnnData(X=matrix, obs=adata.obs, var=genes.var)

    def _gene_column(self, gene_column: str | None) -> str | None:
        return gene_column or self.gene_column

    # -- labels, datasets, collators ------------------------------------------------------------------------

    def _labels(self, adata: AnnData, label_key: str | None) -> tuple[list[str] | None, np.ndarray | None]:
        """(label names, one code per cell) of `obs[label_key]`; names fixed by `label_names` once set."""
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

    def _token_columns(self) -> dict[str, Any]:
        raise NotImplementedError

    def features(self, label_names: list[str] | None = None) -> datasets.Features:
        """Columns of the produced Dataset: the token columns, `length` and, with labels, `labels` (ClassLabel)."""
        columns = {**self._token_columns(), "length": datasets.Value("int32")}
        if label_names is not None:
            columns["labels"] = datasets.ClassLabel(names=label_names)
        return datasets.Features(columns)

    def _dataset(self, batches: list[pa.RecordBatch], label_names: list[str] | None) -> datasets.Dataset:
        table = pa.Table.from_batches(batches, schema=self.features(label_names).arrow_schema)
        # An explicit fingerprint: datasets would otherwise pickle the whole table to hash it.
        return datasets.Dataset(InMemoryTable(table), fingerprint=uuid.uuid4().hex)

    def _fix_labels(self, label_names: list[str] | None) -> None:
        if label_names is not None and self.label_names is None:
            self.label_names = label_names

    @staticmethod
    def _warn_empty_cells(n_empty: int, n_cells: int, where: str, kept: str) -> None:
        if n_empty:
            warnings.warn(
                f"{n_empty} of {n_cells} cells have no expressed gene in {where}; they are kept {kept}. Drop them "
                f"first if that is not wanted: sc.pp.filter_cells(adata, min_genes=1)",
                stacklevel=3,
            )

    def data_collator(self, training: bool = True, **kwargs):
        """The collator that batches this processor's Dataset rows (`collator_class.from_processor`)."""
        return self.collator_class.from_processor(self, training=training, **kwargs)


CellProcessor.push_to_hub = copy_func(CellProcessor.push_to_hub)
CellProcessor.push_to_hub.__doc__ = (CellProcessor.push_to_hub.__doc__ or "").format(
    object="processor", object_class="AutoProcessor", object_files="processor files"
)


def resolve_folder(
    name_or_path: str | os.PathLike,
    patterns: tuple[str, ...],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    subfolder: str = "",
) -> Path:
    """A local folder as it is, or the files matching `patterns` of a Hub repo (`owner/name` at `revision`)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / subfolder if subfolder else path
    if path.exists() or not is_hub_repo_id(str(name_or_path)):
        raise MissingFileError(
            f"{name_or_path} is not a folder; pass the folder given to save_pretrained() or a Hub repo id (owner/name)"
        )
    at = f"{name_or_path} at revision {revision}" if revision else str(name_or_path)
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    try:
        folder = snapshot_download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=[prefix + pattern for pattern in patterns],
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise MissingFileError(
            f"{name_or_path} is not a local folder, and the Hub has no repo {at} that this token may read"
        ) from err
    except LocalEntryNotFoundError as err:
        raise HubConnectionError(
            f"{at} is neither a local folder nor in the Hugging Face cache, and the Hub cannot be reached now; "
            f"check the connection or pass a local folder"
        ) from err
    return Path(folder) / subfolder if subfolder else Path(folder)


def is_hub_repo_id(reference: str) -> bool:
    """True for `owner/name`, the form of a model repo id on the Hub (which a relative path may also have)."""
    if reference.count("/") != 1:
        return False
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return False
    return True


def select_columns(chunk: sp.csr_matrix, columns: np.ndarray, n_columns: int) -> sp.csr_matrix:
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
