"""Cell embeddings from a backbone, optionally through a trained adapter, written under the `key_added` scheme:
`obsm[f"X_{key_added}"]` and the record `uns[key_added]` (see `outputs.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad

from ..models.fingerprint import backbone_fingerprint
from .backbones import (
    DEMO_BACKBONE_NAME,
    base_reference,
    base_revision,
    load_backbone,
    load_processor,
    make_collator,
    resolve_base,
)
from .hub import resolve_adapter
from .inference import run_model
from .integration_model import load_integration_model
from .outputs import DEFAULT_KEY, CellResults, base_record, check_key_added, run_record
from .trained import load_trained_model
from .training_knobs import resolve_device, resolve_precision


def embed_cells(
    adata: ad.AnnData,
    base: str | Path | None = None,
    adapter: str | Path | None = None,
    batch_size: int = 64,
    species: str | None = None,
    batch_key: str | None = None,
    revision: str | None = None,
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    gene_column: str | None = None,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
) -> ad.AnnData | None:
    """Write one embedding per cell to `adata.obsm[f"X_{key_added}"]` and what produced it to `adata.uns[key_added]`
    (task, settings, base, adapter, versions); in place returning None, or into a copy that is returned (`copy=True`).

    With `adapter`, the adapted model's embedding is used (the adapter's processor and base model, `base`
    overriding the latter; a Hub id is read at `revision`, or written `user/name@revision`); without it, the
    base model's own (`config.cell_emb_style`). `species` maps the cells' genes to human ones through the shipped ortholog table (see `scpeft_hf.data.orthologs`). An adapter
    written by `integrate` reads each cell's batch from `obs[batch_key]` (default: the training run's batch column).
    `layer` / `use_raw` / `gene_column` choose the matrix and gene names read (default: the adapter's saved choice,
    or X and the var index for a base alone).
    `precision` (auto|fp32|bf16|fp16) and `device` (auto|cpu|cuda|cuda:N) as in every command.
    """
    check_key_added(key_added)
    input_selection = {"layer": layer, "use_raw": use_raw, "gene_column": gene_column}
    target = resolve_device(device)
    settings = {
        "batch_size": batch_size,
        "precision": resolve_precision(precision, target),
        "device": str(target),
    }
    passes = {"precision": precision, "progress": progress}
    reference = None if adapter is None else str(adapter)
    if adapter is not None:
        adapter = resolve_adapter(adapter)  # a Hub id becomes the downloaded folder
    if adapter is not None and _written_by_integrate(adapter):
        integration = load_integration_model(adapter, base=base, revision=revision, device=device)
        integration.processor.with_input(**input_selection)
        batch_key = batch_key or integration.run_info["batch_key"]
        embeddings = integration.embed(adata, batch_key, batch_size, **passes)
        run_info = integration.run_info
        record = run_record(
            "embed", settings | {"batch_key": batch_key}, base=base_record(run_info), adapter=reference,
            method=run_info["method"],
        )  # fmt: skip
        return CellResults(key_added, embeddings=embeddings, record=record).write_into(adata, copy=copy)
    if adapter is not None:
        model, processor, run_info = load_trained_model(
            adapter, base, species=species, revision=revision, device=device, **input_selection
        )
        base_details, details = base_record(run_info), {"method": run_info["method"]}
    else:
        base_dir = resolve_base(base, revision)
        processor = load_processor(base_dir, species=species).with_input(**input_selection)
        model = load_backbone(base_dir, processor)
        base_details = {
            "name": DEMO_BACKBONE_NAME if base is None else base_reference(base_dir),
            "revision": base_revision(base_dir),
            "fingerprint": backbone_fingerprint(model),  # hashed on the CPU, before the move
        }
        model.to(target)
        details = {"method": "zero-shot"}
    result = run_model(
        model,
        processor(adata),
        make_collator(processor, train=False),
        batch_size,
        description="embed",
        **passes,
    )
    record = run_record(
        "embed", settings | {"species": species}, base=base_details, adapter=reference, **details
    )
    return CellResults(key_added, embeddings=result.cell_embeddings, record=record).write_into(
        adata, copy=copy
    )


def _written_by_integrate(adapter: str | Path) -> bool:
    run_info = Path(adapter) / "run_info.json"
    return run_info.is_file() and json.loads(run_info.read_text()).get("task") == "integration"
