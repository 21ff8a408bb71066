"""Geneformer's gene dictionaries (token ids, gene medians, symbol → Ensembl ID), from pickles or JSON.

The official dictionaries ship as pickles. Unpickling can run arbitrary code, so they are read with a
restricted unpickler that builds only dicts, lists/tuples of them, str, int, float and bool; numpy scalars
(which some medians are) are decoded from their raw bytes when their dtype is a plain number, and every other
class is refused. `convert_dictionary_to_json` writes the JSON form that needs no unpickling at all.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..errors import InvalidInputError

# Official file name patterns, for model folders the dictionaries were copied into.
DICTIONARY_PATTERNS = {
    "token": "token_dictionary*",
    "median": "gene_median_dictionary*",
    "gene_name_id": "gene_name_id_dict*",
}
GeneTable = pd.DataFrame | Mapping | str | os.PathLike
DictionaryKind = Literal["token", "median", "gene_name_id"]
_VALUE_TYPES: dict[str, tuple[type, ...]] = {"token": (int,), "median": (int, float), "gene_name_id": (str,)}
_NUMERIC_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"}


def _numpy_dtype(name: object, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(name, str) or name.lstrip("<>=|") not in _NUMERIC_DTYPES:
        raise pickle.UnpicklingError(f"numpy dtype {name!r} is not a plain number type")
    return np.dtype(name)


def _numpy_scalar(dtype: object, data: object = None) -> int | float | bool:
    if not isinstance(dtype, np.dtype) or dtype.str.lstrip("<>=|") not in _NUMERIC_DTYPES:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not a plain number")
    if isinstance(data, str):  # pickles written by Python 2 / protocol 0 carry latin-1 text
        data = data.encode("latin-1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar without its raw bytes")
    return np.frombuffer(data, dtype=dtype)[0].item()


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain Python data only; numpy scalars become Python numbers, everything else is refused."""

    def find_class(self, module: str, name: str):
        if module in _NUMPY_MODULES and name == "scalar":
            return _numpy_scalar
        if module in _NUMPY_MODULES and name == "dtype":
            return _numpy_dtype
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only plain dict/str/int/float data is read from pickles"
        )


def safe_load_pickle(path: str | os.PathLike) -> object:
    """Unpickle `path` allowing plain data only (see the module docstring); raises `ValueError` otherwise."""
    try:
        return _PlainUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError) as err:
        raise InvalidInputError(
            f"{path} is not a plain-data pickle ({err}); Geneformer dictionaries hold only str keys and "
            f"int/float/str values. Convert a trusted file to JSON yourself and pass the .json instead"
        ) from None


def load_dictionary(source: str | os.PathLike | Mapping, kind: DictionaryKind) -> dict:
    """A Geneformer dictionary from a `.pkl` (read safely), a `.json`, or an in-memory mapping, checked.

    `kind` is "token" (`{ensembl_id or special token: int id}`), "median" (`{ensembl_id: float median}`) or
    "gene_name_id" (`{symbol: ensembl_id}`).
    """
    where = "the dictionary" if isinstance(source, Mapping) else str(source)
    if isinstance(source, Mapping):
        data = source
    elif str(source).endswith(".json"):
        data = json.loads(Path(source).read_text())
    else:
        data = safe_load_pickle(source)
    if not isinstance(data, Mapping):
        raise InvalidInputError(
            f"{where} holds a {type(data).__name__}, not a dict as Geneformer's {kind} dictionary"
        )
    allowed = _VALUE_TYPES[kind]
    out = {}
    for key, value in data.items():
        value = value.item() if isinstance(value, np.generic) else value
        if not isinstance(key, str) or not isinstance(value, allowed) or isinstance(value, bool):
            raise InvalidInputError(
                f"{where} has entry {key!r}: {value!r} ({type(value).__name__}); a {kind} dictionary maps str to "
                f"{' or '.join(t.__name__ for t in allowed)}"
            )
        out[key] = value
    return out


def convert_dictionary_to_json(
    source: str | os.PathLike, target: str | os.PathLike, kind: DictionaryKind
) -> Path:
    """Read an official pickle safely once and write it as JSON (keys in their original order)."""
    data = load_dictionary(source, kind)
    Path(target).write_text(json.dumps(data, ensure_ascii=False))
    return Path(target)


def find_dictionary(directory: Path, kind: DictionaryKind) -> Path | None:
    """The one official `kind` dictionary (`.pkl`/`.pickle`/`.json`) in a model folder, or None."""
    found = sorted(
        path
        for path in directory.glob(DICTIONARY_PATTERNS[kind])
        if path.suffix in (".pkl", ".pickle", ".json")
    )
    if len(found) > 1:
        raise InvalidInputError(
            f"{directory} has several {DICTIONARY_PATTERNS[kind]} files ({', '.join(p.name for p in found)}); "
            f"keep only the one that matches the model"
        )
    return found[0] if found else None


def gene_table_frame(table: GeneTable) -> pd.DataFrame | str | os.PathLike:
    """A symbol → Ensembl table as `read_gene_table` takes it; dicts and official pickles become DataFrames."""
    if isinstance(table, Mapping):
        return pd.DataFrame({"symbol": list(table.keys()), "ensembl_id": list(table.values())})
    if isinstance(table, (str, os.PathLike)) and str(table).endswith((".pkl", ".pickle", ".json")):
        return gene_table_frame(load_dictionary(table, "gene_name_id"))
    return table
