"""Cell embeddings from a backbone, optionally through a trained adapter, written to `obsm["X_scpeft"]`."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import torch

from .annotation import load_annotator
from .backbones import load_backbone, load_processor, make_collator, resolve_base
from .inference import run_model


def embed_cells(
    adata: ad.AnnData,
    base: str | Path | None = None,
    adapter: str | Path | None = None,
    batch_size: int = 64,
    species: str | None = None,
) -> ad.AnnData:
    """Write one embedding per cell to `adata.obsm["X_scpeft"]` and return `adata`.

    With `adapter`, the adapted model's embedding is used (the adapter's processor and base model, `base`
    overriding the latter); without it, the base model's own (`config.cell_emb_style`). `species` maps the
    cells' genes to human ones through the shipped ortholog table (see `scpeft_hf.data.orthologs`).
    """
    if adapter is not None:
        annotator = load_annotator(adapter, base=base, species=species)
        model, processor = annotator.model, annotator.processor
    else:
        base_dir = resolve_base(base)
        processor = load_processor(base_dir, species=species)
        model = load_backbone(base_dir, processor).to("cuda" if torch.cuda.is_available() else "cpu")
    result = run_model(model, processor(adata), make_collator(processor, train=False), batch_size)
    adata.obsm["X_scpeft"] = result.cell_embeddings
    return adata
