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
from peft import PeftModel
from transformers import TrainingArguments
from transformers.utils import logging as transformers_logging

from ..data import GeneformerProcessor
from ..errors import InvalidInputError, MissingDependencyError, MissingFileError, MissingKeyError
from ..models.fingerprint import backbone_fingerprint
from ..models.scgpt import ScGPTForBatchIntegration
from ..output_folders import check_out_dir, make_staging_dir, publish
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
from .integration_report import plot_integration_umap, render_integration_card
from .integration_training import IntegrationTrainer, KeepLowestValidationLoss, validation_rows
from .methods import PEFT_METHODS, prepare_model
from .scib import (
    EXTRA,
    INSTALL_HINT,
    harmony_embedding,
    integration_metrics,
    pca_embedding,
    require_scib_metrics,
    scib_metrics_version,
)

logger = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
METRICS = "metrics.json"
INTEGRATED = "integrated.h5ad"
METHODS = (*PEFT_METHODS, "full")
# Trained and saved beside the adapter: the decoders, the batch modules and DSBN's running statistics.
INTEGRATION_MODULES = ("decoder", "mvc_decoder", "batch_encoder", "batch_discriminator", "dsbn")
KEY_ADDED = "scpeft"  # the key_added scheme: obsm["X_scpeft"], obsm["X_scpeft_zero_shot"], uns["scpeft"]
EMBEDDING_KEY = f"X_{KEY_ADDED}"


@dataclass
class IntegrationSettings:
    """How an integration model is trained. The objective's defaults are scGPT's integration tutorial, except
    `include_zero_genes`: the tutorial feeds all 1,200 genes of every cell, zeros included; the default here
    feeds each cell's expressed genes only (several times shorter sequences, so it fits a CPU)."""

    epochs: int = 15
    batch_size: int = 32
    learning_rate: float | None = None
    mask_ratio: float = 0.4
    n_top_genes: int = 1200
    include_zero_genes: bool = False
    max_length: int | None = None
    validation_fraction: float = 0.1
    min_cells_per_batch: int = 10
    use_batch_labels: bool = True
    domain_spec_batchnorm: bool = True
    gep_weight: float = 1.0
    gepc_weight: float = 1.0
    ecs_weight: float = 10.0
    ecs_threshold: float = 0.8
    dab_weight: float = 1.0
    seed: int = 0
    gradient_checkpointing: bool = False
    logging_steps: int = 10


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


def batch_ids(values, batch_names: list[str]) -> np.ndarray:
    """Index of each cell's batch in `batch_names`; -1 for a batch the model never saw (see DSBN)."""
    lookup = {name: index for index, name in enumerate(batch_names)}
    return np.array([lookup.get(str(value), -1) for value in values], dtype=np.int64)


def _normalised(embedding: np.ndarray) -> np.ndarray:
    return embedding / np.linalg.norm(embedding, axis=1, keepdims=True).clip(min=1e-12)


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
) -> IntegrationResult:
    """Fine-tune `method` with scGPT's integration objective and write a complete folder to `out_dir`: the adapter
    (the whole model for `full`), its processor, `integrated.h5ad` (`obsm["X_scpeft"]`, `obsm["X_scpeft_zero_shot"]`,
    `obsm["X_pca"]`), `metrics.json` (scIB metrics per embedding), `umap.png`, `run_info.json` and a model card.
    `base` is a folder or a Hub id (at `revision`, or `user/name@revision`), recorded by id and commit.
    """
    settings = settings or IntegrationSettings()
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
                use_cpu=not torch.cuda.is_available(),
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
        integrated.obsm[EMBEDDING_KEY] = _normalised(
            run_model(model, dataset, embed_collator).cell_embeddings
        )
        backbone = load_backbone(base_dir, processor).to(next(model.parameters()).device)
        zero_shot = run_model(
            backbone, dataset.remove_columns("batch_labels"), embed_collator
        ).cell_embeddings
        integrated.obsm[f"{EMBEDDING_KEY}_zero_shot"] = _normalised(zero_shot)
        integrated.obsm["X_pca"] = pca_embedding(adata, hvg_genes)
        embeddings = {"scpeft": EMBEDDING_KEY, "zero_shot": f"{EMBEDDING_KEY}_zero_shot", "pca": "X_pca"}
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
        integrated.uns[KEY_ADDED] = {
            "task": "integration",
            "method": method,
            "base_model": run_info["base_model"],
            "adapter": str(out_dir),
            "batch_key": batch_key,
            "embeddings": embeddings,
            "metrics_library": metrics["metrics_library"],
        }
        (staging / METRICS).write_text(json.dumps(metrics, indent=2))
        integrated.write_h5ad(staging / INTEGRATED)
        plot_integration_umap(integrated, EMBEDDING_KEY, batch_key, label_key, staging / "umap.png")
        (staging / "README.md").write_text(
            render_integration_card(run_info, metrics, adapter_ref=str(out_dir))
        )
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return IntegrationResult(out_dir, metrics)


def integration_model(
    base_dir: Path, settings: IntegrationSettings, num_batches: int
) -> ScGPTForBatchIntegration:
    """The base model with the integration heads. The decoders widen to read the batch embedding and the batch
    modules are new, so they start fresh: transformers' load report (a table of those keys) is not shown."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ScGPTForBatchIntegration.from_pretrained(
                base_dir, ignore_mismatched_sizes=True, **_objective(settings, num_batches)
            )
    finally:
        transformers_logging.set_verbosity(verbosity)


def _objective(settings: IntegrationSettings, num_batches: int) -> dict:
    return dict(
        num_batch_labels=num_batches,
        use_batch_labels=settings.use_batch_labels,
        domain_spec_batchnorm=settings.domain_spec_batchnorm,
        use_batch_discriminator=settings.dab_weight > 0,
        use_mvc=True,
        gep_weight=settings.gep_weight,
        gepc_weight=settings.gepc_weight,
        ecs_weight=settings.ecs_weight,
        ecs_threshold=settings.ecs_threshold,
        dab_weight=settings.dab_weight,
    )


def _has_module(model: torch.nn.Module, name: str) -> bool:
    return any(module_name.split(".")[-1] == name for module_name, _ in model.named_modules())


@dataclass
class IntegrationModel:
    """A trained integration model with its processor: embeds new cells into the integrated space."""

    model: torch.nn.Module
    processor: object
    run_info: dict

    def embed(self, adata: ad.AnnData, batch_key: str | None = None, batch_size: int = 64) -> np.ndarray:
        """L2-normalised cell embeddings. Cells of a batch not seen in training are normalised by DSBN with the
        mean of all training batches' statistics (with a warning naming those batches)."""
        batch_key = batch_key or self.run_info["batch_key"]
        dataset = self.processor(adata)
        if self.model.config.domain_spec_batchnorm:
            if batch_key not in adata.obs:
                raise MissingKeyError(
                    f"obs has no {batch_key!r} column: this adapter normalises each batch with its own statistics; "
                    "pass batch_key= (--batch-key) naming the batch column"
                )
            ids = batch_ids(adata.obs[batch_key], self.run_info["batch_names"])
            unseen = sorted(set(adata.obs[batch_key].astype(str)[ids < 0]))
            if unseen:
                warnings.warn(
                    f"batches not seen in training ({', '.join(unseen[:5])}) are normalised with the mean statistics "
                    f"of the {len(self.run_info['batch_names'])} training batches",
                    stacklevel=2,
                )
            dataset = dataset.add_column("batch_labels", ids.tolist())
        result = run_model(self.model, dataset, make_collator(self.processor, train=False), batch_size)
        return _normalised(result.cell_embeddings)


def load_integration_model(
    adapter_dir: str | Path, base: str | Path | None = None, revision: str | None = None
) -> IntegrationModel:
    """Load a folder written by `integrate`; the base is the recorded one (at its recorded Hub commit) unless
    `base` (at `revision`) overrides it."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / RUN_INFO).is_file():
        raise MissingFileError(
            f"{adapter_dir} has no {RUN_INFO}: not a folder written by `scpeft-hf integrate`"
        )
    run_info = json.loads((adapter_dir / RUN_INFO).read_text())
    processor = load_processor(adapter_dir)
    if run_info["method"] in PEFT_METHODS:
        base_dir = resolve_base(
            base or run_info["base_model"], revision if base else run_info.get("base_model_revision")
        )
        settings = IntegrationSettings(
            **{k: v for k, v in run_info["training"].items() if k in IntegrationSettings.__dataclass_fields__}
        )
        model = integration_model(base_dir, settings, len(run_info["batch_names"]))
        if backbone_fingerprint(model) != run_info["base_model_fingerprint"]:
            raise InvalidInputError(
                f"the adapter in {adapter_dir} was trained on another base model than {base_dir}; pass --base with "
                "the model it was trained on"
            )
        model = PeftModel.from_pretrained(model, adapter_dir)
    else:
        model = ScGPTForBatchIntegration.from_pretrained(adapter_dir)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return IntegrationModel(model=model, processor=processor, run_info=run_info)


__all__ = ["EXTRA", "IntegrationSettings", "integrate", "load_integration_model"]
