"""Which backbone a task runs on, and the matching processor, collator and model classes.

The backbone is read from the folder: an adapter folder names its processor in `processor_config.json`
(`processor_class`), a base folder its architecture in `config.json` (`model_type`: "scgpt", or "geneformer" /
official Geneformer's "bert").
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from anndata import AnnData
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from ..data import GeneformerDataCollator, GeneformerProcessor, ScGPTDataCollator, ScGPTProcessor
from ..data.processing_utils import is_hub_repo_id
from ..errors import HubConnectionError, InvalidInputError, MissingFileError
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
PROCESSOR_BY_MODEL_TYPE = {
    "scgpt": ScGPTProcessor,
    "bert": GeneformerProcessor,
    "geneformer": GeneformerProcessor,
}

Processor = ScGPTProcessor | GeneformerProcessor
logger = logging.getLogger(__name__)


def split_revision(
    base: str | Path | None, revision: str | None = None
) -> tuple[str | Path | None, str | None]:
    """(base, revision) from `USER/NAME@REVISION` (a branch, tag or commit of a Hub model), the one syntax every
    command's `--base` and the Python API's `base=` accept; anything else is returned unchanged with `revision`.
    An existing folder is never split, so a local path may contain "@"."""
    if base is None or isinstance(base, Path) or "@" not in base or Path(base).exists():
        return base, revision
    repo_id, _, at = base.partition("@")
    if not at or not is_hub_repo_id(repo_id):
        raise InvalidInputError(
            f"--base {base} is neither a folder nor a Hub model USER/NAME@REVISION; write the Hub id, '@', then a "
            "branch, tag or commit (e.g. alice/scgpt-human@main), or pass an existing folder"
        )
    if revision is not None and revision != at:
        raise InvalidInputError(
            f"--base {base} names revision {at} but revision={revision!r} was also given; pass one of them"
        )
    return repo_id, at


def resolve_base(base: str | Path | None, revision: str | None = None) -> Path:
    """A base model folder: the embedded demo backbone when `base` is None or `DEMO_BACKBONE_NAME`; `base` itself
    when it is a folder; else, for an `owner/name` id (or `owner/name@revision`, see `split_revision`), that Hub
    model at `revision` (from the Hugging Face cache, or downloaded). A retired embedded backbone is refused with
    its name."""
    base, revision = split_revision(base, revision)
    if str(base) in RETIRED_BACKBONES:
        raise InvalidInputError(
            f"the adapter was trained on {base}, {RETIRED_BACKBONES[str(base)]}; retrain it with this version "
            f"(default base {DEMO_BACKBONE_NAME}), or use scpeft-hf 0.1.0 to load it"
        )
    if base is None or str(base) == DEMO_BACKBONE_NAME:
        folder = DEMO_BACKBONE
    elif not Path(base).exists() and is_hub_repo_id(str(base)):
        folder = _hub_base(str(base), revision)
    else:
        folder = Path(base)
    if not (folder / "config.json").is_file():
        hint = (
            "the embedded demo backbone is missing from this installation; reinstall scpeft-hf"
            if folder == DEMO_BACKBONE
            else "pass a folder written by `scpeft-hf convert` or save_pretrained(), a Geneformer model folder, "
            "or a Hub model id"
        )
        raise MissingFileError(f"{folder} has no config.json: {hint}")
    return folder


def _hub_base(repo_id: str, revision: str | None) -> Path:
    at = f"{repo_id} at revision {revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise MissingFileError(
            f"{repo_id} is not a local folder, and the Hub has no model {at} that this token may read"
        ) from err
    except LocalEntryNotFoundError as err:
        raise HubConnectionError(
            f"The base model {at} is neither in the Hugging Face cache nor downloadable now; check the network "
            "connection, or pass --base with a local copy"
        ) from err


def hub_snapshot(folder: str | Path) -> tuple[str, str] | None:
    """(repo id, commit) when `folder` is a model snapshot in the Hugging Face cache, which keeps them as
    `.../models--owner--name/snapshots/<commit>`; None for any other folder."""
    parts = Path(folder).resolve().parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    repo_id, commit = parts[-3].removeprefix("models--").replace("--", "/"), parts[-1]
    if not is_hub_repo_id(repo_id) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    return repo_id, commit


def base_reference(base_dir: str | Path) -> str:
    """How a trained folder records its base: the embedded backbone by name, a Hub model (a snapshot in the
    Hugging Face cache) by its id, with its commit in `base_revision`; any other folder by absolute path, with a
    warning that the adapter will then load only where that path exists (or with --base)."""
    base_dir = Path(base_dir).resolve()
    if base_dir == DEMO_BACKBONE.resolve():
        return DEMO_BACKBONE_NAME
    snapshot = hub_snapshot(base_dir)
    if snapshot is not None:
        return snapshot[0]
    logger.warning(
        "The base model %s is a local folder: the adapter records this path and loads only where it exists "
        "(elsewhere pass --base with a copy of the same weights); a base from the Hub is recorded by its id",
        base_dir,
    )
    return str(base_dir)


def name_base_in_adapter(model: PreTrainedModel, reference: str, revision: str | None) -> None:
    """Make a peft model's saved `adapter_config.json` name its base as `run_info.json` does (`base_reference`,
    `base_revision`): a Hub id and commit rather than the cache snapshot path the model was loaded from."""
    for config in getattr(model, "peft_config", {}).values():
        config.base_model_name_or_path = reference
        config.revision = revision


def base_revision(base_dir: str | Path) -> str | None:
    """The Hub commit of a base model snapshot (see `base_reference`); None for local folders and the demo."""
    snapshot = hub_snapshot(base_dir)
    return snapshot[1] if snapshot is not None else None


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
    return processor.data_collator(training=train, **kwargs)


def load_classifier(folder: str | Path, processor: Processor, **config_overrides) -> PreTrainedModel:
    """The annotation model in `folder` for the backbone `processor` belongs to (head new unless saved there)."""
    if isinstance(processor, GeneformerProcessor):
        return load_geneformer(
            folder,
            "classification",
            dictionary_size=processor.vocab_size,
            **(_geneformer_pooling(processor, folder) | config_overrides),
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
            folder,
            "embedding",
            dictionary_size=processor.vocab_size,
            **_geneformer_pooling(processor, folder),
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


def _geneformer_pooling(processor: GeneformerProcessor, folder: str | Path) -> dict:
    """Geneformer's default cell embedding: `<cls>` when the cells carry one (V2), else the mean (V1); none when
    the folder's config.json already names one (a model fine-tuned and saved with its own pooling)."""
    if "cell_emb_style" in json.loads((Path(folder) / "config.json").read_text()):
        return {}
    return {"cell_emb_style": "cls" if processor.special_tokens else "mean"}


def describe_preprocessing(processor: Processor) -> str:
    """One sentence a model card can show, naming the matrix read when it is not X."""
    sentence = _describe_steps(processor, processor.to_dict())
    if processor.use_raw:
        return f"{sentence[:-1]}, read from `.raw.X`."
    if processor.layer:
        return f"{sentence[:-1]}, read from layer `{processor.layer}`."
    return sentence


def _describe_steps(processor: Processor, settings: dict) -> str:
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
