"""Row-chunked reading of AnnData matrices and atomic Arrow cache files, so tokenizing needs bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InvalidInputError, MissingKeyError


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
