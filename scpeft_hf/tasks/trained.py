"""Loading a folder written by `scpeft-hf train` (or shared on the Hub): its model, processor and run_info.json.

Shared by the tasks that run a trained model (annotation's `predict`, embeddings, attention marker genes).
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel

from ..data.orthologs import read_pretrained_genes
from ..errors import InvalidInputError, MissingFileError
from ..models.fingerprint import backbone_fingerprint
from ..output_folders import RUN_INFO
from .backbones import Processor, load_backbone, load_classifier, load_processor, resolve_base
from .hub import resolve_adapter
from .methods import PEFT_METHODS, load_peft_adapter
from .training_knobs import resolve_device


def load_trained_model(
    adapter: str | Path,
    base: str | Path | None = None,
    species: str | None = None,
    revision: str | None = None,
    device: str = "auto",
    **input_selection,
) -> tuple[PreTrainedModel | PeftModel, Processor, dict]:
    """(model in eval mode, processor, run_info) of a folder written by `train_annotation`, or of an adapter
    shared on the Hub under `adapter` ("user/name", see `push_adapter`) when no such local folder exists.

    The base model is the one recorded at training time (a Hub base at its recorded commit) unless `base` (a
    folder, or a Hub id at `revision` or written `user/name@revision`) overrides it; either way its weights
    must match the recorded fingerprint, so an adapter is never applied to a different backbone. `species`
    maps the cells' genes to human ones (an adapter trained with a species applies its saved map by itself).
    `input_selection` (`layer`, `use_raw`, `gene_column`; None keeps the saved one) overrides what the processor reads.
    `device` is where the model goes: auto (a CUDA GPU if visible, else the CPU), cpu, cuda or cuda:N.
    """
    target = resolve_device(device)  # a bad --device fails before anything is loaded
    adapter_dir = resolve_adapter(adapter)
    info_path = adapter_dir / RUN_INFO
    if not info_path.is_file():
        raise MissingFileError(f"{adapter_dir} has no {RUN_INFO}: not a folder written by `scpeft-hf train`")
    run_info = json.loads(info_path.read_text())
    processor = load_processor(adapter_dir, species=species).with_input(**input_selection)
    if run_info["method"] in PEFT_METHODS:
        base_dir = resolve_base(
            base or run_info["base_model"], revision if base else run_info.get("base_model_revision")
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
    model.to(target).eval()
    return model, processor, run_info


def load_embedding_model(
    adapter: str | Path | None = None,
    base: str | Path | None = None,
    species: str | None = None,
    revision: str | None = None,
    device: str = "auto",
) -> tuple[PreTrainedModel | PeftModel, Processor]:
    """(model in eval mode, processor) whose outputs carry `cell_embedding`: a `train` adapter on its base (see
    `load_trained_model`), or without `adapter` the base itself (the embedded backbone when `base` is None; a Hub id
    at `revision`). A folder written by `integrate` embeds through `integration_model.load_integration_model`."""
    if adapter is not None:
        adapter_dir = resolve_adapter(adapter)
        info_path = adapter_dir / RUN_INFO
        if info_path.is_file() and json.loads(info_path.read_text()).get("task") == "integration":
            raise InvalidInputError(
                f"{adapter} was written by `integrate`, whose embeddings need each cell's batch: embed it in memory "
                "(embed_cells, or `scpeft-hf embed` without --backed)"
            )
        model, processor, _ = load_trained_model(
            adapter_dir, base, species=species, revision=revision, device=device
        )
        return model, processor
    target = resolve_device(device)
    base_dir = resolve_base(base, revision)
    processor = load_processor(base_dir, species=species)
    model = load_backbone(base_dir, processor)
    return model.to(target).eval(), processor
