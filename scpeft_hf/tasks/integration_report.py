"""What `integrate` writes for people: a UMAP coloured by batch and by label, and the model card."""

from __future__ import annotations

import string
from pathlib import Path

import anndata as ad
from huggingface_hub import ModelCardData
from matplotlib.figure import Figure

from .card import METHOD_NAMES, TEMPLATES, describe_base, hub_model_id

METRIC_COLUMNS = (
    "nmi",
    "ari",
    "asw_label",
    "asw_batch",
    "graph_conn",
    "ilisi",
    "clisi",
    "avg_bio",
    "avg_batch",
    "overall",
)


def plot_integration_umap(
    adata: ad.AnnData, key: str, batch_key: str, label_key: str | None, path: Path
) -> None:
    """UMAP of `obsm[key]` coloured by batch (and by label when there is one), drawn on its own Figure."""
    import scanpy as sc

    cells = ad.AnnData(
        obsm={key: adata.obsm[key]}, obs=adata.obs[[c for c in (batch_key, label_key) if c]].copy()
    )
    sc.pp.neighbors(cells, use_rep=key, n_neighbors=min(15, max(2, cells.n_obs - 1)), random_state=0)
    sc.tl.umap(cells, random_state=0)
    columns = [c for c in (batch_key, label_key) if c]
    figure = Figure(figsize=(6.5 * len(columns), 5.5))
    for axis, column in zip(figure.subplots(1, len(columns), squeeze=False)[0], columns, strict=True):
        values = cells.obs[column].astype(str).to_numpy()
        for name in sorted(set(values)):
            points = cells.obsm["X_umap"][values == name]
            axis.scatter(points[:, 0], points[:, 1], s=4, label=name)
        axis.set_title(f"{key}: {column}")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")


def metrics_table(metrics: dict) -> str:
    """Markdown table: one row per embedding, one column per metric present."""
    rows = {name: values for name, values in metrics.items() if isinstance(values, dict)}
    columns = [c for c in METRIC_COLUMNS if any(c in values for values in rows.values())]
    lines = ["| embedding | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [f"{values[c]:.3f}" if c in values else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_integration_card(run_info: dict, metrics: dict, adapter_ref: str, license: str = "mit") -> str:
    training = run_info["training"]
    terms = [
        f"{name.upper()} ×{training[f'{name}_weight']:g}"
        for name in ("gep", "gepc", "ecs", "dab")
        if training[f"{name}_weight"]
    ]
    if training["domain_spec_batchnorm"]:
        terms.append("DSBN")
    metadata = ModelCardData(
        library_name="peft",
        base_model=hub_model_id(run_info["base_model"]),
        license=license,
        tags=[
            "single-cell",
            "scpeft",
            "scpeft-hf",
            run_info["model_type"],
            run_info["method"],
            "batch-integration",
        ],
        pipeline_tag="other",
        base_model_fingerprint=run_info["base_model_fingerprint"],
    )
    names = run_info["batch_names"]
    values = {
        "metadata": metadata.to_yaml().rstrip("\n"),
        "title": f"{METHOD_NAMES[run_info['method']]} for {run_info['model_type']}: integrating {run_info['batch_key']}",
        "method_name": METHOD_NAMES[run_info["method"]],
        "model_type": run_info["model_type"],
        "base_model": describe_base(run_info["base_model"]),
        "objective": ", ".join(terms),
        "fingerprint": run_info["base_model_fingerprint"],
        "trainable_params": f"{metrics['trainable_params']:,}",
        "total_params": f"{metrics['total_params']:,}",
        "adapter_ref": adapter_ref,
        "batch_key": run_info["batch_key"],
        "n_batches": len(names),
        "batch_names": ", ".join(f"`{name}`" for name in names[:10]) + (", ..." if len(names) > 10 else ""),
        "preprocessing": run_info["preprocessing"],
        "metrics_library": metrics["metrics_library"],
        "n_cells": sum(run_info["n_cells"].values()),
        "table": metrics_table(metrics),
        "train_seconds": f"{metrics['train_seconds']:.0f}",
        "epochs": training["epochs"],
        "learning_rate": training["learning_rate"],
        "batch_size": training["batch_size"],
        "seed": training["seed"],
        "best_epoch": f"epoch {metrics['best_epoch']:g}" if metrics.get("best_epoch") is not None else "none",
    }
    return string.Template((TEMPLATES / "integration.md").read_text()).substitute(values)
