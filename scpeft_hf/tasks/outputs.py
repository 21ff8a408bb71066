"""The scverse `key_added` scheme: where every task (predict, embed, integrate, markers) writes its per-cell results.

For `key_added="scpeft"` (the default):

- `obs["scpeft_pred"]`: predicted label, categorical with every label the model knows as its categories (in the
  model's order), so that plots colour each label the same way whatever was predicted;
- `obs["scpeft_confidence"]`: probability of the predicted label;
- `obsm["X_scpeft"]`: cell embeddings;
- `obsm["scpeft_probabilities"]`: class probabilities, columns in the order of `uns["scpeft"]["labels"]`;
- `uns["scpeft"]`: what produced them (settings, package versions, base, adapter), plus `labels`;
- `layers["scpeft_attention"]` and `uns["scpeft_markers"]`: `markers`' per-cell gene scores and its ranking.

`CellResults.write_into(adata, copy=...)` follows scanpy: `copy=False` writes in place and returns None,
`copy=True` returns a new AnnData and leaves `adata` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InvalidInputError

DEFAULT_KEY = "scpeft"


def check_key_added(key_added: str) -> str:
    """`key_added` must be a non-empty name without '/', which h5ad files cannot store in a key."""
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        raise InvalidInputError(
            f"key_added {key_added!r} is not a usable key; pass a short name such as 'scpeft' (no '/')"
        )
    return key_added


def scores_layer(key_added: str = DEFAULT_KEY) -> str:
    """The layer of per-cell gene scores under `key_added`: `layers[f"{key_added}_attention"]`."""
    return f"{check_key_added(key_added)}_attention"


def markers_key(key_added: str = DEFAULT_KEY) -> str:
    """The `uns` entry of the marker ranking (scanpy's `rank_genes_groups` layout): `uns[f"{key_added}_markers"]`."""
    return f"{check_key_added(key_added)}_markers"


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, for `uns[key_added]["versions"]`."""
    versions = {}
    for package in ("scpeft-hf", "torch", "transformers", "peft", "anndata"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_record(
    task: str, settings: Mapping, *, base: Mapping | None = None, adapter: str | None = None, **details
) -> dict:
    """The `uns[key_added]` record of one run: the task, its settings, the base model and adapter it used, any
    `details` (method, label or batch column...) and the package versions. The in-memory and the streaming paths
    both build their record here."""
    record = {"task": task, "settings": dict(settings), "base": base, "adapter": adapter, **details}
    return storable(record | {"versions": package_versions()})


def base_record(run_info: Mapping) -> dict:
    """The base model as a trained folder's run_info.json records it: every `base_model*` entry (name, revision,
    fingerprint), without the prefix."""
    return {
        "name" if key == "base_model" else key.removeprefix("base_model_"): value
        for key, value in run_info.items()
        if key.startswith("base_model")
    }


def storable(value):
    """`value` with every None dropped and tuples made lists, so that h5ad can store it in `uns`."""
    if isinstance(value, Mapping):
        return {str(k): storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value if v is not None]
    return value


@dataclass
class CellResults:
    """Per-cell results of one task under one `key_added`; rows follow the cells of the AnnData they came from."""

    key_added: str = DEFAULT_KEY
    embeddings: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    label_names: Sequence[str] | None = None
    record: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_key_added(self.key_added)
        if self.probabilities is not None and (
            self.label_names is None or len(self.label_names) != self.probabilities.shape[1]
        ):
            raise ValueError("probabilities need one label name per column")

    @property
    def n_obs(self) -> int:
        rows = self.embeddings if self.embeddings is not None else self.probabilities
        return 0 if rows is None else len(rows)

    def obs(self) -> dict[str, pd.Categorical | np.ndarray]:
        if self.probabilities is None:
            return {}
        names = list(self.label_names)
        predicted = np.asarray(names, dtype=object)[self.probabilities.argmax(-1)]
        return {
            f"{self.key_added}_pred": pd.Categorical(predicted, categories=names),
            f"{self.key_added}_confidence": self.probabilities.max(-1).astype(np.float32),
        }

    def obsm(self) -> dict[str, np.ndarray]:
        elements = {}
        if self.embeddings is not None:
            elements[f"X_{self.key_added}"] = np.asarray(self.embeddings, dtype=np.float32)
        if self.probabilities is not None:
            elements[f"{self.key_added}_probabilities"] = np.asarray(self.probabilities, dtype=np.float32)
        return elements

    def uns(self) -> dict:
        record = dict(self.record)
        if "versions" not in record:  # run_record has them already; look them up only when missing
            record["versions"] = package_versions()
        if self.label_names is not None:
            record["labels"] = [str(name) for name in self.label_names]
        return storable(record)

    def write_into(self, adata: ad.AnnData, copy: bool = False) -> ad.AnnData | None:
        """Add the results to `adata` (in place, returning None) or to a copy of it (returned)."""
        if adata.n_obs != self.n_obs:
            raise ValueError(f"results cover {self.n_obs} cells but the AnnData has {adata.n_obs}")
        target = adata.copy() if copy else adata
        for name, values in self.obs().items():
            target.obs[name] = pd.Series(values, index=target.obs_names)
        for name, values in self.obsm().items():
            target.obsm[name] = values
        target.uns[self.key_added] = self.uns()
        return target if copy else None
