"""Loading a folder written by `scpeft-hf train` (or shared on the Hub): its model, processor and run_info.json.

Shared by the tasks that run a trained model (annotation's `predict`, embeddings, attention marker genes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from ..data.orthologs import read_pretrained_genes
from ..errors import InvalidInputError, MissingFileError
from ..models.fingerprint import backbone_fingerprint
from .backbones import Processor, load_backbone, load_classifier, load_processor, resolve_base
from .methods import PEFT_METHODS, load_peft_adapter

RUN_INFO = "run_info.json"


def load_trained_model(
    adapter: str | Path, base: str | Path | None = None, species: str | None = None
) -> tuple[PreTrainedModel | PeftModel, Processor, dict]:
    """(model in eval mode, processor, run_info) of a folder written by `train_annotation`, or of an adapter
    shared on the Hub under `adapter` ("user/name", see `push_adapter`) when no such local folder exists.

    The base model is the one recorded at training time unless `base` overrides it; either way its weights
    must match the recorded fingerprint, so an adapter is never applied to a different backbone. `species`
    maps the cells' genes to human ones (an adapter trained with a species applies its saved map by itself).
    """
    from .hub import resolve_adapter  # hub.py builds on the annotation task, so it is imported on use

    adapter_dir = resolve_adapter(adapter)
    info_path = adapter_dir / RUN_INFO
    if not info_path.is_file():
        raise MissingFileError(f"{adapter_dir} has no {RUN_INFO}: not a folder written by `scpeft-hf train`")
    run_info = json.loads(info_path.read_text())
    processor = load_processor(adapter_dir, species=species)
    if run_info["method"] in PEFT_METHODS:
        base_dir = resolve_base(
            base or run_info["base_model"], None if base else run_info.get("base_model_revision")
        )
        processor.pretrained_genes = read_pretrained_genes(base_dir)
        model = load_classifier(
            base_dir,
            processor,
            num_labels=len(run_info["label_names"]),
            id2label=dict(enumerate(run_info["label_names"])),
        )
        fingerprint = backbone_fingerprint(model)
        if fingerprint != run_info["base_model_fingerprint"]:
            raise InvalidInputError(
                f"The adapter in {adapter_dir} was trained on {run_info['base_model']} (fingerprint "
                f"{run_info['base_model_fingerprint']}), but {base_dir} has {fingerprint}. Pass --base with the "
                "model the adapter was trained on."
            )
        model = load_peft_adapter(model, adapter_dir)
    else:
        model = load_classifier(adapter_dir, processor)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, processor, run_info


def load_embedding_model(
    adapter: str | Path | None = None, base: str | Path | None = None, species: str | None = None
) -> tuple[PreTrainedModel | PeftModel, Processor]:
    """(model in eval mode, processor) whose outputs carry `cell_embedding`: a `train` adapter on its base (see
    `load_trained_model`), or without `adapter` the base itself (the embedded backbone when `base` is None).
    A folder written by `integrate` embeds through `integration.load_integration_model` instead."""
    if adapter is not None:
        from .hub import resolve_adapter

        adapter_dir = resolve_adapter(adapter)
        info_path = adapter_dir / RUN_INFO
        if info_path.is_file() and json.loads(info_path.read_text()).get("task") == "integration":
            raise InvalidInputError(
                f"{adapter} was written by `integrate`, whose embeddings need each cell's batch: embed it in memory "
                "(embed_cells, or `scpeft-hf embed` without --backed)"
            )
        model, processor, _ = load_trained_model(adapter_dir, base, species=species)
        return model, processor
    base_dir = resolve_base(base)
    processor = load_processor(base_dir, species=species)
    model = load_backbone(base_dir, processor)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), processor
