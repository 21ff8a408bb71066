"""Row-chunked reading of AnnData matrices (in memory or in an .h5ad file opened with h5py) and atomic Arrow cache
files, so tokenizing and inference need memory bounded by the chunk, not by the number of cells."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from anndata import AnnData
from anndata.io import read_elem, sparse_dataset

from ..errors import InvalidInputError, MissingFileError, MissingKeyError


def expression_matrix(adata: AnnData, layer: str | None = None):
    """`adata.X` or `adata.layers[layer]` (possibly backed on disk), with a clear error for a missing layer."""
    if layer is None:
        if adata.X is None:
            raise InvalidInputError(
                "AnnData has no X; pass layer=<name of the layer holding the expression values>"
            )
        return adata.X
    if layer not in adata.layers:
        raise MissingKeyError(
            f"AnnData has no layer {layer!r}; its layers are {list(adata.layers)} (layer=None uses X)"
        )
    return adata.layers[layer]


def iter_csr_chunks(matrix, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield `(first_row, rows as canonical float32 CSR without stored zeros)`, `chunk_size` rows at a time.

    Works on in-memory dense/sparse matrices and on backed ones (only the chunk is read from disk). Chunks
    of an in-memory float32 CSR matrix that is already canonical are views into it, not copies.
    """
    if sp.issparse(matrix) and matrix.format == "csc":
        raise InvalidInputError(
            "the expression matrix is CSC, which cannot be read row by row; convert it first "
            "(adata.X = adata.X.tocsr()), or write the .h5ad with a CSR matrix for streaming"
        )
    viewable = sp.issparse(matrix) and matrix.dtype == np.float32 and matrix.has_canonical_format
    for start in range(0, matrix.shape[0], chunk_size):
        stop = min(start + chunk_size, matrix.shape[0])
        if viewable:
            begin, end = matrix.indptr[start], matrix.indptr[stop]
            indptr = (matrix.indptr[start : stop + 1] - begin).astype(matrix.indices.dtype)
            parts = (matrix.data[begin:end], matrix.indices[begin:end], indptr)
            chunk = sp.csr_matrix(parts, shape=(stop - start, matrix.shape[1]), copy=False)
            if np.all(chunk.data):
                yield start, chunk
                continue
            chunk = chunk.copy()
        else:
            rows = matrix[start:stop]
            chunk = sp.csr_matrix(rows if sp.issparse(rows) else np.asarray(rows), dtype=np.float32)
            chunk.sum_duplicates()
        chunk.eliminate_zeros()
        yield start, chunk


def file_fingerprint(path: str | os.PathLike, settings: dict) -> str:
    """Cache key: the file's identity (absolute path, size, modification time) and the tokenizer settings."""
    stat = Path(path).stat()
    identity = {
        "path": str(Path(path).resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        **settings,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextmanager
def atomic_arrow_writer(path: Path, schema: pa.Schema) -> Iterator[pa.ipc.RecordBatchStreamWriter]:
    """Write an Arrow stream file (the format of `datasets` caches) that appears at `path` only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.incomplete")
    try:
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            yield writer
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def open_h5ad(path: str | os.PathLike) -> Iterator[h5py.File]:
    """The .h5ad file at `path` opened read-only with h5py (nothing is loaded), with one-line errors."""
    if not Path(path).is_file():
        raise MissingFileError(f"{path} does not exist; pass the path of an .h5ad file")
    try:
        file = h5py.File(path, "r")
    except OSError as err:  # truncated, not HDF5, or unreadable
        raise InvalidInputError(
            f"{path} cannot be read as .h5ad ({str(err).splitlines()[0]}); the file is damaged or not an AnnData "
            "file: write it again with adata.write_h5ad()"
        ) from err
    with file:
        if "obs" not in file or "var" not in file:
            raise InvalidInputError(
                f"{path} is HDF5 but not an AnnData file (no obs/var); write it with write_h5ad()"
            )
        yield file


def read_frame(file: h5py.File, key: str) -> pd.DataFrame:
    """`obs` or `var` of an open .h5ad file (small next to X: one row per cell or gene)."""
    return read_elem(file[key])


def h5ad_matrix(file: h5py.File, layer: str | None = None):
    """`X` or `layers[layer]` of an open .h5ad file as a backed matrix that reads only the rows asked for."""
    if layer is None:
        if "X" not in file:
            raise InvalidInputError(
                f"{file.filename} has no X; pass layer=<name of the layer holding the expression values>"
            )
        element = file["X"]
    else:
        layers = list(file["layers"]) if "layers" in file else []
        if layer not in layers:
            raise MissingKeyError(
                f"{file.filename} has no layer {layer!r}; its layers are {layers} (layer=None uses X)"
            )
        element = file["layers"][layer]
    if isinstance(element, h5py.Dataset):
        return element
    encoding = element.attrs.get("encoding-type", "")
    if encoding == "csc_matrix":
        raise InvalidInputError(
            f"the expression matrix of {file.filename} is CSC, which cannot be read row by row; write it with a CSR "
            "matrix (adata.X = adata.X.tocsr(); adata.write_h5ad(path)) to stream it"
        )
    if encoding != "csr_matrix":
        raise InvalidInputError(
            f"the expression matrix of {file.filename} is stored as {encoding or 'an unknown element'}; streaming "
            "reads dense arrays and CSR matrices"
        )
    return sparse_dataset(element)


def iter_h5ad_chunks(
    matrix, obs: pd.DataFrame, var: pd.DataFrame, chunk_size: int, layer: str | None = None
) -> Iterator[tuple[int, AnnData]]:
    """Yield `(first_row, in-memory AnnData of the next chunk_size cells)` from a backed matrix.

    Each chunk has the cells' `obs` rows, all of `var`, and the rows (float32 CSR) as `X`; with `layer` the
    same rows also sit in `layers[layer]`, so a processor reading that layer finds it.
    """
    if len(obs) != matrix.shape[0] or len(var) != matrix.shape[1]:
        raise InvalidInputError(
            f"the expression matrix is {matrix.shape[0]} x {matrix.shape[1]} but obs has {len(obs)} rows and var "
            f"{len(var)}; the .h5ad file is inconsistent: write it again with adata.write_h5ad()"
        )
    for start, rows in iter_csr_chunks(matrix, chunk_size):
        layers = {layer: rows} if layer is not None else None
        yield start, AnnData(X=rows, obs=obs.iloc[start : start + rows.shape[0]], var=var, layers=layers)


def h5ad_memory_size(path: str | os.PathLike) -> int:
    """Bytes the arrays of an .h5ad file take once read into memory (uncompressed), from the file's metadata."""
    total = 0

    def add(_name: str, item) -> None:
        nonlocal total
        if isinstance(item, h5py.Dataset) and item.dtype.kind != "O":
            total += item.size * item.dtype.itemsize

    with open_h5ad(path) as file:
        file.visititems(add)
    return total


def available_memory() -> int:
    """Bytes of memory available to new allocations (`MemAvailable` on Linux, else free physical pages)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
