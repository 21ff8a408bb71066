"""Batch integration: fine-tune an adapter (or the whole model) with scGPT's integration objective, embed every
cell, and score the embedding with scIB metrics beside the zero-shot backbone, PCA and (if installed) Harmony."""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from transformers import TrainingArguments

from ..data import GeneformerProcessor
from ..errors import InvalidInputError, MissingDependencyError, MissingKeyError
from ..models.fingerprint import backbone_fingerprint
from ..output_folders import METRICS, RUN_INFO, check_out_dir, make_staging_dir, publish
from .backbones import (
    base_reference,
    base_revision,
    describe_preprocessing,
    load_backbone,
    load_processor,
    make_collator,
    name_base_in_adapter,
    resolve_base,
)
from .inference import run_model
from .integration_model import (
    IntegrationModel,
    IntegrationSettings,
    batch_ids,
    integration_model,
    load_integration_model,
    normalised,
)
from .integration_report import plot_integration_umap, render_integration_card
from .integration_training import IntegrationTrainer, KeepLowestValidationLoss, validation_rows
from .methods import PEFT_METHODS, prepare_model
from .outputs import DEFAULT_KEY, CellResults, base_record, check_key_added, run_record
from .scib import (
    EXTRA,
    INSTALL_HINT,
    harmony_embedding,
    integration_metrics,
    pca_embedding,
    require_scib_metrics,
    scib_metrics_version,
)
from .training_knobs import resolve_precision, trainer_arguments

logger = logging.getLogger(__name__)

INTEGRATED = "integrated.h5ad"
METHODS = (*PEFT_METHODS, "full")
# Trained and saved beside the adapter: the decoders, the batch modules and DSBN's running statistics.
INTEGRATION_MODULES = ("decoder", "mvc_decoder", "batch_encoder", "batch_discriminator", "dsbn")


@dataclass
class IntegrationResult:
    out_dir: Path
    metrics: dict


def check_integration_input(
    adata: ad.AnnData, batch_key: str, label_key: str | None, min_cells_per_batch: int
) -> ad.AnnData:
    """Refuse what cannot be integrated (one line each); drop batches too small for DSBN with a warning."""
    for key, flag in ((batch_key, "--batch-key"), (label_key, "--label-key")):
        if key is not None and key not in adata.obs:
            raise MissingKeyError(
                f"{flag} {key!r} is not a column of adata.obs; columns: {', '.join(map(str, adata.obs))}"
            )
    batches = adata.obs[batch_key]
    if batches.isna().any():
        raise InvalidInputError(
            f"obs[{batch_key!r}] is missing for {int(batches.isna().sum())} cells; give every cell a batch"
        )
    sizes = batches.astype(str).value_counts()
    small = sizes[sizes < min_cells_per_batch]
    if len(small) and len(sizes) - len(small) >= 2:
        warnings.warn(
            f"dropping {int(small.sum())} cells of batches with fewer than {min_cells_per_batch} cells "
            f"({', '.join(f'{name}: {count}' for name, count in small.items())})",
            stacklevel=2,
        )
        adata = adata[~batches.astype(str).isin(small.index).to_numpy()].copy()
    elif len(sizes) - len(small) < 2:
        raise InvalidInputError(
            f"obs[{batch_key!r}] has {len(sizes)} batch(es) and {len(sizes) - len(small)} with at least "
            f"{min_cells_per_batch} cells ({dict(sizes)}); integration needs two or more batches of that size"
        )
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X).ravel()
    if values.size and (values.min() < 0 or not np.all(np.mod(values[:100_000], 1) == 0)):
        raise InvalidInputError(
            "adata.X does not hold raw counts (negative or non-integer values); integrate selects highly variable "
            "genes with seurat_v3 and needs counts: put the raw counts in X (e.g. adata.X = adata.layers['counts'])"
        )
    return adata


def select_hvgs(adata: ad.AnnData, candidates: np.ndarray, batch_key: str, n_top_genes: int) -> list[str]:
    """Batch-aware `seurat_v3` highly variable genes among `candidates` (the genes in the vocabulary)."""
    import scanpy as sc

    try:
        import skmisc  # noqa: F401  (seurat_v3's loess)
    except ImportError as err:
        raise MissingDependencyError(f"seurat_v3 gene selection needs scikit-misc: {INSTALL_HINT}") from err
    # Seurat's min.cells = 3: genes seen in fewer cells make seurat_v3's per-batch loess fit singular.
    counts = adata[:, candidates].X
    detected = np.asarray((counts > 0).sum(axis=0)).ravel()
    subset = ad.AnnData(counts[:, detected >= 3].astype(np.float32), obs=adata.obs[[batch_key]].copy())
    subset.var_names = np.asarray(adata.var_names[candidates])[detected >= 3].astype(str)
    n_top_genes = min(n_top_genes, subset.n_vars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = sc.pp.highly_variable_genes(
                subset, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key, inplace=False
            )
        except ValueError:  # the loess is still singular in some batch: keep genes every batch expresses
            batches = subset.obs[batch_key].astype(str).to_numpy()
            in_every_batch = np.all(
                [
                    np.asarray((subset.X[batches == b] > 0).sum(axis=0)).ravel() > 0
                    for b in np.unique(batches)
                ],
                axis=0,
            )
            subset = subset[:, in_every_batch].copy()
            table = sc.pp.highly_variable_genes(
                subset, flavor="seurat_v3", n_top_genes=min(n_top_genes, subset.n_vars), batch_key=batch_key,
                inplace=False,
            )  # fmt: skip
    return subset.var_names[table["highly_variable"].to_numpy()].tolist()


def integrate(
    adata: ad.AnnData,
    batch_key: str,
    label_key: str | None = None,
    method: str = "encoder",
    out_dir: str | Path = "scpeft-integration",
    base: str | Path | None = None,
    settings: IntegrationSettings | None = None,
    overwrite: bool = False,
    revision: str | None = None,
    key_added: str = DEFAULT_KEY,
    progress: bool = True,
) -> IntegrationResult:
    """Fine-tune `method` with scGPT's integration objective and write a complete folder to `out_dir`: the adapter
    (the whole model for `full`), its processor, `integrated.h5ad`, `metrics.json` (scIB metrics per embedding),
    `umap.png`, `run_info.json` and a model card. `integrated.h5ad` follows the `key_added` scheme:
    `obsm[f"X_{key_added}"]` (the integrated embedding), `obsm[f"X_{key_added}_zero_shot"]` (the base model's),
    `obsm["X_pca"]` (and `obsm["X_harmony"]` when harmonypy is installed) and `uns[key_added]` (the record).
    `settings.precision` and `settings.device` apply to training and to the embedding passes alike.
    `base` is a folder or a Hub id (at `revision`, or `user/name@revision`), recorded by id and commit.
    """
    settings = settings or IntegrationSettings()
    embedding_key = f"X_{check_key_added(key_added)}"
    knobs = trainer_arguments(settings.precision, False, 1, settings.device)
    if method not in METHODS:
        raise InvalidInputError(
            f"--method {method!r} is not an integration method; choose one of {', '.join(METHODS)}"
        )
    require_scib_metrics()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    adata = check_integration_input(adata, batch_key, label_key, settings.min_cells_per_batch)
    base_dir = resolve_base(base, revision)
    processor = load_processor(base_dir, max_length=settings.max_length)
    if isinstance(processor, GeneformerProcessor):
        raise InvalidInputError(
            f"{base_dir} is a Geneformer model; integrate runs scGPT's objective: pass an scGPT base"
        )
    match = processor.vocab.match(adata, processor.gene_column, None)
    hvg_genes = select_hvgs(adata, np.flatnonzero(match.matched), batch_key, settings.n_top_genes)
    processor.hvg_genes, processor.n_top_genes = hvg_genes, None
    processor.include_zero_genes = settings.include_zero_genes
    processor.label_names = None

    batch_names = sorted(adata.obs[batch_key].astype(str).unique())
    cell_batches = batch_ids(adata.obs[batch_key], batch_names)
    dataset = processor(adata).add_column("batch_labels", cell_batches.tolist())
    validation = validation_rows(cell_batches, settings.validation_fraction, settings.seed)
    train = np.setdiff1d(np.arange(adata.n_obs), validation)

    staging = make_staging_dir(out_dir)
    try:
        torch.manual_seed(settings.seed)
        model = integration_model(base_dir, settings, len(batch_names))
        fingerprint = backbone_fingerprint(model)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        heads = [name for name in INTEGRATION_MODULES if _has_module(model, name)]
        model, learning_rate = prepare_model(model, method, settings.learning_rate, modules_to_save=heads)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        selector = KeepLowestValidationLoss(model)
        trainer = IntegrationTrainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(staging / "checkpoints"),
                num_train_epochs=settings.epochs,
                per_device_train_batch_size=settings.batch_size,
                per_device_eval_batch_size=settings.batch_size,
                learning_rate=learning_rate,
                eval_strategy="epoch",
                save_strategy="no",
                prediction_loss_only=True,
                logging_steps=settings.logging_steps,
                report_to="none",
                seed=settings.seed,
                remove_unused_columns=False,
                label_names=["labels"],
                **knobs,
            ),
            train_dataset=dataset.select(train),
            eval_dataset=dataset.select(validation),
            data_collator=make_collator(processor, train=True, mlm_probability=settings.mask_ratio),
            eval_data_collator=make_collator(processor, train=False, mlm_probability=settings.mask_ratio),
            callbacks=[selector],
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        model = trainer.model.eval()

        embed_collator = make_collator(processor, train=False)
        integrated = adata.copy()
        passes = {"precision": settings.precision, "progress": progress}
        integrated_embedding = normalised(
            run_model(model, dataset, embed_collator, description="embed", **passes).cell_embeddings
        )
        backbone = load_backbone(base_dir, processor).to(next(model.parameters()).device)
        zero_shot = run_model(
            backbone,
            dataset.remove_columns("batch_labels"),
            embed_collator,
            description="zero-shot",
            **passes,
        ).cell_embeddings
        integrated.obsm[f"{embedding_key}_zero_shot"] = normalised(zero_shot)
        integrated.obsm["X_pca"] = pca_embedding(adata, hvg_genes)
        integrated.obsm[embedding_key] = integrated_embedding
        embeddings = {"scpeft": embedding_key, "zero_shot": f"{embedding_key}_zero_shot", "pca": "X_pca"}
        harmony = harmony_embedding(integrated.obsm["X_pca"], adata, batch_key)
        if harmony is not None:
            integrated.obsm["X_harmony"] = harmony
            embeddings["harmony"] = "X_harmony"
        labels = adata.obs[label_key].to_numpy(dtype=object) if label_key else None
        started = time.perf_counter()
        metrics = {
            name: integration_metrics(integrated.obsm[key], adata.obs[batch_key].to_numpy(), labels)
            for name, key in embeddings.items()
        }
        metrics["scib_seconds"] = time.perf_counter() - started
        metrics.update(
            metrics_library=f"scib-metrics {scib_metrics_version()}",
            train_seconds=train_seconds,
            trainable_params=trainable,
            total_params=total,
            best_epoch=selector.best_epoch,
            best_validation_loss=selector.best_loss,
        )

        base_model, base_model_revision = base_reference(base_dir), base_revision(base_dir)
        name_base_in_adapter(model, base_model, base_model_revision)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        run_info = {
            "task": "integration",
            "method": method,
            "model_type": model.config.model_type,
            "base_model": base_model,
            "base_model_revision": base_model_revision,
            "base_model_fingerprint": fingerprint,
            "batch_key": batch_key,
            "batch_names": batch_names,
            "label_key": label_key,
            "hvg_genes": len(hvg_genes),
            "preprocessing": describe_preprocessing(processor),
            "n_cells": {"train": int(len(train)), "validation": int(len(validation))},
            "training": asdict(settings) | {"learning_rate": learning_rate},
        }
        (staging / RUN_INFO).write_text(json.dumps(run_info, indent=2))
        record = run_record(
            "integration",
            asdict(settings) | {"learning_rate": learning_rate},
            base=base_record(run_info),
            adapter=str(out_dir),
            method=method,
            batch_key=batch_key,
            label_key=label_key,
            embeddings=embeddings,
            metrics_library=metrics["metrics_library"],
            precision_used=resolve_precision(settings.precision, next(model.parameters()).device),
        )
        CellResults(key_added, embeddings=integrated_embedding, record=record).write_into(integrated)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2))
        integrated.write_h5ad(staging / INTEGRATED)
        plot_integration_umap(integrated, embedding_key, batch_key, label_key, staging / "umap.png")
        (staging / "README.md").write_text(
            render_integration_card(run_info, metrics, adapter_ref=str(out_dir))
        )
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return IntegrationResult(out_dir, metrics)


def _has_module(model: torch.nn.Module, name: str) -> bool:
    return any(module_name.split(".")[-1] == name for module_name, _ in model.named_modules())


__all__ = [
    "EXTRA",
    "IntegrationModel",
    "IntegrationSettings",
    "batch_ids",
    "integrate",
    "integration_model",
    "load_integration_model",
]
