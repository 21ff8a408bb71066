"""Cell embeddings from a backbone, optionally through a trained adapter, written to `obsm["X_scpeft"]`."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import torch

from .backbones import load_backbone, load_processor, make_collator, resolve_base
from .inference import run_model
from .trained import load_trained_model


def embed_cells(
    adata: ad.AnnData,
    base: str | Path | None = None,
    adapter: str | Path | None = None,
    batch_size: int = 64,
    species: str | None = None,
    batch_key: str | None = None,
    revision: str | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    gene_column: str | None = None,
) -> ad.AnnData:
    """Write one embedding per cell to `adata.obsm["X_scpeft"]` and return `adata`.

    With `adapter`, the adapted model's embedding is used (the adapter's processor and base model, `base`
    overriding the latter; a Hub id is read at `revision`, or written `user/name@revision`); without it, the base model's own (`config.cell_emb_style`). `species` maps the
    cells' genes to human ones through the shipped ortholog table (see `scpeft_hf.data.orthologs`). An adapter
    written by `integrate` reads each cell's batch from `obs[batch_key]` (default: the training run's batch column).
    `layer` / `use_raw` / `gene_column` choose the matrix and gene names read (default: the adapter's saved choice,
    or X and the var index for a base alone).
    """
    input_selection = {"layer": layer, "use_raw": use_raw, "gene_column": gene_column}
    if adapter is not None:
        from .hub import resolve_adapter  # hub.py builds on the task modules, so it is imported on use

        adapter = resolve_adapter(adapter)  # a Hub id becomes the downloaded folder
    if adapter is not None and _written_by_integrate(adapter):
        from .integration import load_integration_model

        integration_model = load_integration_model(adapter, base=base, revision=revision)
        integration_model.processor.with_input(**input_selection)
        adata.obsm["X_scpeft"] = integration_model.embed(adata, batch_key, batch_size)
        return adata
    if adapter is not None:
        model, processor, _ = load_trained_model(
            adapter, base, species=species, revision=revision, **input_selection
        )
    else:
        base_dir = resolve_base(base, revision)
        processor = load_processor(base_dir, species=species).with_input(**input_selection)
        model = load_backbone(base_dir, processor).to("cuda" if torch.cuda.is_available() else "cpu")
    result = run_model(model, processor(adata), make_collator(processor, train=False), batch_size)
    adata.obsm["X_scpeft"] = result.cell_embeddings
    return adata


def _written_by_integrate(adapter: str | Path) -> bool:
    run_info = Path(adapter) / "run_info.json"
    return run_info.is_file() and json.loads(run_info.read_text()).get("task") == "integration"
