"""A trained integration model, shared by `integrate` (which trains it) and `embed` (which applies it to new
cells): the training settings, the model with its integration heads, and loading a folder `integrate` wrote."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from peft import PeftModel
from transformers.utils import logging as transformers_logging

from ..errors import InvalidInputError, MissingFileError, MissingKeyError
from ..models.fingerprint import backbone_fingerprint
from ..models.scgpt import ScGPTForBatchIntegration
from ..output_folders import RUN_INFO
from .backbones import load_processor, make_collator, resolve_base
from .inference import run_model
from .methods import PEFT_METHODS
from .training_knobs import resolve_device


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
    precision: str = "auto"  # auto | fp32 | bf16 | fp16, training and the embedding pass alike
    device: str = "auto"  # auto | cpu | cuda | cuda:N


def batch_ids(values, batch_names: list[str]) -> np.ndarray:
    """Index of each cell's batch in `batch_names`; -1 for a batch the model never saw (see DSBN)."""
    lookup = {name: index for index, name in enumerate(batch_names)}
    return np.array([lookup.get(str(value), -1) for value in values], dtype=np.int64)


def normalised(embedding: np.ndarray) -> np.ndarray:
    return embedding / np.linalg.norm(embedding, axis=1, keepdims=True).clip(min=1e-12)


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


@dataclass
class IntegrationModel:
    """A trained integration model with its processor: embeds new cells into the integrated space."""

    model: torch.nn.Module
    processor: object
    run_info: dict

    def embed(
        self,
        adata: ad.AnnData,
        batch_key: str | None = None,
        batch_size: int = 64,
        precision: str = "auto",
        progress: bool = True,
    ) -> np.ndarray:
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
        result = run_model(
            self.model, dataset, make_collator(self.processor, train=False), batch_size,
            precision=precision, progress=progress, description="embed",
        )  # fmt: skip
        return normalised(result.cell_embeddings)


def load_integration_model(
    adapter_dir: str | Path,
    base: str | Path | None = None,
    revision: str | None = None,
    device: str = "auto",
) -> IntegrationModel:
    """Load a folder written by `integrate`; the base is the recorded one (at its recorded Hub commit) unless `base`
    (at `revision`) overrides it. `device`: auto (a CUDA GPU if visible, else the CPU), cpu, cuda or cuda:N."""
    target = resolve_device(device)
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
    model.to(target).eval()
    return IntegrationModel(model=model, processor=processor, run_info=run_info)
