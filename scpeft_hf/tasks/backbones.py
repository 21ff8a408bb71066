"""Which backbone a task runs on, and the matching processor, collator and model classes.

The backbone is read from the folder: an adapter folder names its processor in `processor_config.json`
(`processor_class`), a base folder its architecture in `config.json` (`model_type`: "scgpt", or "bert" for
Geneformer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from anndata import AnnData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from ..data import GeneformerDataCollator, GeneformerProcessor, ScGPTDataCollator, ScGPTProcessor
from ..errors import InvalidInputError, MissingFileError
from ..models.geneformer import load_geneformer
from ..models.scgpt import ScGPTForCellClassification

DEMO_BACKBONE = Path(__file__).resolve().parents[1] / "assets" / "scgpt-offline-v1"
# How run_info.json names the embedded backbone, so an adapter trained on it loads in any installation.
DEMO_BACKBONE_NAME = "scpeft-hf/scgpt-offline-v1"
# Embedded backbones that earlier releases shipped: their adapters get an error that names them.
RETIRED_BACKBONES = {
    "scpeft-hf/scgpt-demo": "the 765-gene PBMC demonstration backbone of scpeft-hf 0.1.0, which no longer ships "
    "(replaced by scpeft-hf/scgpt-offline-v1)"
}
PROCESSORS = {"ScGPTProcessor": ScGPTProcessor, "GeneformerProcessor": GeneformerProcessor}
PROCESSOR_BY_MODEL_TYPE = {"scgpt": ScGPTProcessor, "bert": GeneformerProcessor}

Processor = ScGPTProcessor | GeneformerProcessor


def resolve_base(base: str | Path | None) -> Path:
    """A base model folder: `base` itself, or the embedded demo backbone when None or `DEMO_BACKBONE_NAME`."""
    if str(base) in RETIRED_BACKBONES:
        raise InvalidInputError(
            f"the adapter was trained on {base}, {RETIRED_BACKBONES[str(base)]}; retrain it with this version "
            f"(default base {DEMO_BACKBONE_NAME}), or use scpeft-hf 0.1.0 to load it"
        )
    folder = DEMO_BACKBONE if base is None or str(base) == DEMO_BACKBONE_NAME else Path(base)
    if not (folder / "config.json").is_file():
        hint = (
            "the embedded demo backbone is missing from this installation; reinstall scpeft-hf"
            if folder == DEMO_BACKBONE
            else "pass a folder written by `scpeft-hf convert` or save_pretrained(), or a Geneformer model folder"
        )
        raise MissingFileError(f"{folder} has no config.json: {hint}")
    return folder


def base_reference(base_dir: str | Path) -> str:
    """How a trained folder records its base: the embedded backbone by name, any other folder by absolute path."""
    base_dir = Path(base_dir).resolve()
    return DEMO_BACKBONE_NAME if base_dir == DEMO_BACKBONE.resolve() else str(base_dir)


def is_hub_repo_id(reference: str) -> bool:
    """True for `owner/name`, the form of a model repo id on the Hub (which a relative path may also have)."""
    if reference.count("/") != 1:
        return False
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return False
    return True


def processor_class(folder: str | Path) -> type[Processor]:
    """The processor class for `folder`: named in its `processor_config.json`, else by its `model_type`."""
    folder = Path(folder)
    processor_config = folder / "processor_config.json"
    if processor_config.is_file():
        name = json.loads(processor_config.read_text()).get("processor_class", "ScGPTProcessor")
        if name not in PROCESSORS:
            raise InvalidInputError(
                f"{processor_config} names processor_class {name!r}; known: {', '.join(PROCESSORS)}"
            )
        return PROCESSORS[name]
    model_config = folder / "config.json"
    model_type = json.loads(model_config.read_text()).get("model_type") if model_config.is_file() else "scgpt"
    if model_type not in PROCESSOR_BY_MODEL_TYPE:
        raise InvalidInputError(
            f"{model_config} has model_type {model_type!r}; scpeft-hf runs {', '.join(PROCESSOR_BY_MODEL_TYPE)} "
            f"(bert = Geneformer)"
        )
    return PROCESSOR_BY_MODEL_TYPE[model_type]


@dataclass
class SpeciesSettings:
    """Cells of another species than human: the processor's ortholog settings (see `scpeft_hf.data.orthologs`)."""

    species: str | None = None
    ortholog_table: pd.DataFrame | str | Path | None = None
    ortholog_policy: str | None = None
    strict: bool = False


def load_processor(folder: str | Path, **overrides) -> Processor:
    """The processor saved in `folder` (or derived from its model files); None/False overrides are ignored."""
    overrides = {k: v for k, v in overrides.items() if v is not None and v is not False}
    kind = processor_class(folder)
    ortholog_options = sorted({"species", "ortholog_table", "ortholog_policy", "strict"} & set(overrides))
    if kind is GeneformerProcessor and ortholog_options:
        raise InvalidInputError(
            f"{', '.join(ortholog_options)} applies to scGPT backbones; Geneformer keys genes by Ensembl id: "
            f"map them to human Ensembl ids before tokenizing"
        )
    return kind.from_pretrained(folder, **overrides)


def ortholog_coverage(processor: Processor, adata: AnnData) -> dict | None:
    """Map `adata`'s genes once (raising on bad input before anything is written); the coverage, if mapped."""
    if getattr(processor, "gene_map", None) is None:
        return None
    processor.match_genes(adata)
    coverage = processor.ortholog_coverage
    print(f"Orthologs ({processor.species}, policy {processor.gene_map.policy}): {coverage.report()}")
    return coverage.as_dict()


def make_collator(processor: Processor, train: bool, **kwargs) -> ScGPTDataCollator | GeneformerDataCollator:
    if isinstance(processor, GeneformerProcessor):
        return GeneformerDataCollator.from_processor(processor, training=train, **kwargs)
    return ScGPTDataCollator.from_processor(processor, training=train, **kwargs)


def load_classifier(folder: str | Path, processor: Processor, **config_overrides) -> PreTrainedModel:
    """The annotation model in `folder` for the backbone `processor` belongs to (head new unless saved there)."""
    if isinstance(processor, GeneformerProcessor):
        return load_geneformer(
            folder,
            "classification",
            dictionary_size=processor.vocab_size,
            **_geneformer_pooling(processor),
            **config_overrides,
        )
    legacy = _legacy_head_mapping(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, key_mapping=legacy, **config_overrides)
    if legacy:  # saving again writes the current names, not the ones the folder was loaded from
        model._weight_conversions = None
    return _check_vocab_fits(model, processor, folder)


def _legacy_head_mapping(folder: str | Path) -> dict[str, str] | None:
    """The renaming of an older release's head (`cls_decoder.*`) when the folder's weights still use it."""
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(weights, "pt") as handle:
        legacy = any(key.startswith("cls_decoder.") for key in handle.keys())
    return ScGPTForCellClassification._checkpoint_conversion_mapping if legacy else None


def load_backbone(folder: str | Path, processor: Processor) -> PreTrainedModel:
    """The base model in `folder`, returning cell embeddings (`outputs.cell_embedding`)."""
    if isinstance(processor, GeneformerProcessor):
        return load_geneformer(
            folder, "embedding", dictionary_size=processor.vocab_size, **_geneformer_pooling(processor)
        )
    return _check_vocab_fits(AutoModel.from_pretrained(folder), processor, folder)


def _check_vocab_fits(
    model: PreTrainedModel, processor: ScGPTProcessor, folder: str | Path
) -> PreTrainedModel:
    """The processor's vocab must fit the model: its size and special-token ids must be the config's (a larger
    vocab gives token ids past the gene embedding, a shifted one sends genes to other genes' embeddings)."""
    vocab, config = processor.vocab, model.config
    mismatch = [
        f"{name} {ours} vs {theirs}"
        for name, ours, theirs in (
            ("size", len(vocab), config.vocab_size),
            ("<pad> id", vocab.pad_token_id, config.pad_token_id),
            ("<cls> id", vocab.cls_token_id, config.cls_token_id),
        )
        if ours != theirs
    ]
    if mismatch:
        raise InvalidInputError(
            f"The gene vocabulary does not match the model in {folder} ({', '.join(mismatch)} in config.json): "
            "use the vocab.json saved with this model (or the adapter trained on it)"
        )
    return model


def _geneformer_pooling(processor: GeneformerProcessor) -> dict:
    """Geneformer's default cell embedding: `<cls>` when the cells carry one (V2), else the mean (V1)."""
    return {"cell_emb_style": "cls" if processor.special_tokens else "mean"}


def describe_preprocessing(processor: Processor) -> str:
    """One sentence a model card can show."""
    settings = processor.to_dict()
    if isinstance(processor, GeneformerProcessor):
        specials = "`<cls>` … `<eos>`" if settings["special_tokens"] else "no special tokens"
        return (
            f"Geneformer rank-value encoding of raw counts: counts / n_counts × {settings['target_sum']:g} / gene "
            f"median, non-zero genes ranked highest first (ties by token id), at most {settings['max_length']} "
            f"tokens per cell, {specials}."
        )
    steps = [f"input `{settings['input_kind']}`"]
    if settings.get("normalize_total"):
        steps.append(f"normalize_total to {settings['normalize_total']:g}")
    if settings.get("log1p"):
        steps.append("log1p")
    if settings.get("hvg_genes"):
        steps.append(f"{len(settings['hvg_genes'])} highly variable genes")
    steps.append(f"{settings['n_bins']} per-cell quantile bins ({settings['ties']} ties)")
    steps.append(f"at most {settings['max_length']} genes per cell incl. `<cls>`")
    if getattr(processor, "gene_map", None) is not None:
        gene_map = processor.gene_map
        steps.insert(
            0,
            f"{gene_map.species} genes mapped to human ({gene_map.policy} policy, {gene_map.table_source} table)",
        )
    return ", ".join(steps) + "."
