"""File-to-file inference: `predict` and `embed` on an .h5ad file larger than memory, streamed chunk by chunk.

The source file is opened read-only with h5py and read `chunk_size` cells at a time; each chunk is tokenized
in memory by the model's processor and run through the model, so peak memory follows the chunk size, not the
number of cells. The output is a byte copy of the source (X untouched) plus the elements of the `key_added`
scheme (see `outputs.CellResults`: obs columns, obsm arrays written row block by row block, `uns[key_added]`),
written into a temporary file beside the destination that replaces it only once complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import torch
from anndata.io import write_elem

from ..data.streaming import (
    available_memory,
    h5ad_matrix,
    h5ad_memory_size,
    iter_h5ad_chunks,
    open_h5ad,
    read_frame,
)
from ..errors import InvalidInputError, OutputExistsError
from .backbones import make_collator
from .inference import run_model
from .outputs import DEFAULT_KEY, CellResults, check_key_added, run_record
from .training_knobs import resolve_precision

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 2048
# `predict`/`embed` stream a file whose arrays would take more than this share of the available memory.
AUTO_BACKED_FRACTION = 0.5

ChunkResults = Callable[[ad.AnnData], CellResults]
Progress = Callable[[int, int], None]


@dataclass
class FileResult:
    """What a streamed run wrote: the output file, its (small) new `obs`, and how long the cells took."""

    path: Path
    obs: pd.DataFrame
    n_obs: int
    seconds: float


def too_large_for_memory(path: str | os.PathLike, fraction: float = AUTO_BACKED_FRACTION) -> bool:
    """True when the file's arrays, read whole, would take more than `fraction` of the available memory."""
    return h5ad_memory_size(path) > fraction * available_memory()


def predict_file(
    annotator,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    key_added: str = DEFAULT_KEY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = 64,
    layer: str | None = None,
    record: dict | None = None,
    progress: Progress | None = None,
    precision: str = "auto",
) -> FileResult:
    """Annotate the cells of the .h5ad file `src` with `annotator` (see `annotation.load_annotator`) into `dst`.

    `dst` is `src` plus `obs[f"{key_added}_pred"]`, `obs[f"{key_added}_confidence"]`, `obsm[f"X_{key_added}"]`,
    `obsm[f"{key_added}_probabilities"]` and `uns[key_added]`: the elements the in-memory `predict` writes.
    """
    processor, model, label_names = annotator.processor, annotator.model, list(annotator.label_names)
    _check_streamable(processor)
    collator = make_collator(processor, train=False)
    if record is None:
        record = annotator.record(batch_size, precision, backed=True, chunk_size=chunk_size)

    def results(chunk: ad.AnnData) -> CellResults:
        output = run_model(model, processor(chunk), collator, batch_size, precision=precision, progress=False)
        probabilities = torch.softmax(torch.from_numpy(output.logits), dim=-1).numpy()
        return CellResults(key_added, output.cell_embeddings, probabilities, label_names, record)

    return stream_cell_results(src, dst, results, chunk_size=chunk_size, layer=layer, progress=progress)


def embed_file(
    model: torch.nn.Module,
    processor,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    key_added: str = DEFAULT_KEY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = 64,
    layer: str | None = None,
    record: dict | None = None,
    progress: Progress | None = None,
    precision: str = "auto",
) -> FileResult:
    """Write `model`'s cell embeddings of the cells in `src` to `obsm[f"X_{key_added}"]` of `dst` (`src` plus
    that array and `uns[key_added]`). `model` returns `cell_embedding` (a base, or a trained annotation model)."""
    _check_streamable(processor)
    collator = make_collator(processor, train=False)
    if record is None:
        device = next(model.parameters()).device
        settings = {"batch_size": batch_size, "precision": resolve_precision(precision, device)}
        record = run_record(
            "embed", settings | {"device": str(device), "backed": True, "chunk_size": chunk_size}
        )

    def results(chunk: ad.AnnData) -> CellResults:
        output = run_model(model, processor(chunk), collator, batch_size, precision=precision, progress=False)
        return CellResults(key_added, embeddings=output.cell_embeddings, record=record)

    return stream_cell_results(src, dst, results, chunk_size=chunk_size, layer=layer, progress=progress)


def stream_cell_results(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    results: ChunkResults,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    layer: str | None = None,
    progress: Progress | None = None,
) -> FileResult:
    """Write `src` plus `results(chunk)` for every chunk of cells to `dst`; `dst` appears only when complete.

    `results` maps an in-memory AnnData of up to `chunk_size` cells to their `CellResults` (one key_added for
    all chunks). `progress(cells_done, n_obs)` is called after each chunk. `src` is only read; an existing
    `dst` is replaced at the end (the caller decides whether it may be).
    """
    src, dst = Path(src), Path(dst)
    if chunk_size < 1:
        raise InvalidInputError(f"chunk_size={chunk_size}; pass a positive number of cells per chunk")
    if dst.is_dir():
        raise OutputExistsError(f"{dst} is a folder; pass the path of the .h5ad file to write")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        with open_h5ad(src) as source:
            obs, var = read_frame(source, "obs"), read_frame(source, "var")
            if len(obs) == 0:
                raise InvalidInputError(f"{src} has 0 cells; pass a file with at least one cell")
            matrix = h5ad_matrix(source, layer)
            chunks = iter_h5ad_chunks(matrix, obs, var, chunk_size, layer)
            shutil.copyfile(src, partial)  # a byte copy: X and everything else stay exactly as they are
            started = time.perf_counter()
            with h5py.File(partial, "r+") as target:
                writer = _ResultsWriter(target, len(obs))
                for start, chunk in chunks:
                    writer.add(start, results(chunk))
                    if progress is not None:
                        progress(start + chunk.n_obs, len(obs))
                seconds = time.perf_counter() - started
                new_obs = writer.finish(obs)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("%d cells in %.1f s (%.1f cells/s) -> %s", len(obs), seconds, len(obs) / seconds, dst)
    return FileResult(path=dst, obs=new_obs, n_obs=len(obs), seconds=seconds)


class _ResultsWriter:
    """Puts per-chunk `CellResults` into an open .h5ad copy: obsm rows as they come, obs and uns at the end."""

    def __init__(self, file: h5py.File, n_obs: int):
        self.file, self.n_obs = file, n_obs
        self.key_added: str | None = None
        self.obs_parts: dict[str, list] = {}
        self.last: CellResults | None = None
        self.rows_done = 0

    def add(self, start: int, results: CellResults) -> None:
        if self.key_added is None:
            self.key_added = check_key_added(results.key_added)
        elif results.key_added != self.key_added:
            raise ValueError(f"chunks disagree on key_added: {self.key_added!r} then {results.key_added!r}")
        if start != self.rows_done:
            raise ValueError(f"chunk starts at cell {start}, expected {self.rows_done}")
        obsm = _group(self.file, "obsm")
        for name, values in results.obsm().items():
            if start == 0:
                if name in obsm:
                    del obsm[name]  # the in-memory path replaces an existing element of the same name
                dataset = obsm.create_dataset(name, shape=(self.n_obs, *values.shape[1:]), dtype=values.dtype)
                dataset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            obsm[name][start : start + len(values)] = values
        for name, values in results.obs().items():
            self.obs_parts.setdefault(name, []).append(values)
        self.last = results
        self.rows_done = start + results.n_obs

    def finish(self, obs: pd.DataFrame) -> pd.DataFrame:
        """Write the whole `obs` with the new columns and `uns[key_added]`; returns that `obs`."""
        if self.rows_done != self.n_obs:
            raise ValueError(f"results cover {self.rows_done} cells but the file has {self.n_obs}")
        obs = obs.copy()
        for name, parts in self.obs_parts.items():
            values = (
                pd.api.types.union_categoricals(parts)
                if isinstance(parts[0], pd.Categorical)
                else np.concatenate(parts)
            )
            obs[name] = pd.Series(values, index=obs.index)
        # as write_h5ad does before writing, so the file reads back as the in-memory path's would
        holder = ad.AnnData(obs=obs)
        holder.strings_to_categoricals()
        obs = holder.obs
        del self.file["obs"]
        write_elem(self.file, "obs", obs)
        uns = _group(self.file, "uns")
        if self.key_added in uns:
            del uns[self.key_added]
        write_elem(uns, self.key_added, self.last.uns())
        return obs


def _group(file: h5py.File, name: str) -> h5py.Group:
    """`file[name]`, created as an empty AnnData mapping when an older writer left it out."""
    if name not in file:
        write_elem(file, name, {})
    return file[name]


def _check_streamable(processor) -> None:
    if getattr(processor, "n_top_genes", None) and getattr(processor, "hvg_genes", None) is None:
        raise InvalidInputError(
            "the processor chooses highly variable genes from the cells it sees, which a chunk at a time cannot "
            "do: fit it on an in-memory AnnData first (processor(adata)), or set hvg_genes=[...]"
        )
