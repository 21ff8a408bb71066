"""`GeneformerConfig`: transformers' `BertConfig` under its own `model_type`, plus the cell-level settings.

Geneformer is BERT with ReLU, `layer_norm_eps` 1e-12, absolute positions, two token types and `<pad>` = id 0.
Its own `model_type` ("geneformer") lets the Auto classes pick the cell-level models without taking over
"bert", which every other BERT checkpoint uses. Official folders (`model_type` "bert") convert on load with
`geneformer_config_from_bert`. The presets are Geneformer's published sizes (the config.json files of
ctheodoris/Geneformer). V1 feeds up to 2,048 ranked genes without special tokens; V2 feeds `<cls>`, up to 4,094
genes and `<eos>` in 4,096 positions, which is where its default cell embedding (`<cls>`) comes from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import BertConfig

from ...errors import InvalidInputError, MissingFileError

CELL_EMB_STYLES = ("cls", "mean")


@strict
class GeneformerConfig(BertConfig):
    r"""Configuration of Geneformer (BERT) with its cell-level heads. The defaults are Geneformer V2-104M.

    Every `BertConfig` field keeps its meaning; these are added:

    Args:
        cell_emb_style (`str`, defaults to `"cls"`):
            How one vector per cell is pooled from a layer's token states: `"cls"` (the first token, `<cls>` in
            V2) or `"mean"` (the mean over real tokens, Geneformer's choice for V1, which has no `<cls>`).
        cell_emb_layer (`int`, defaults to -2):
            Layer whose states are pooled into the cell embedding, indexed into `hidden_states` (embeddings
            first): -2 is the second-to-last layer, as in Geneformer's EmbExtractor.
        class_weights (`list[float]`, *optional*):
            Per-class weights of the cross-entropy loss of `GeneformerForCellClassification`.
    """

    model_type = "geneformer"

    vocab_size: int = 20_275
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "relu"
    hidden_dropout_prob: float | int = 0.02
    attention_probs_dropout_prob: float | int = 0.02
    max_position_embeddings: int = 4096
    cell_emb_style: str = "cls"
    cell_emb_layer: int = -2
    class_weights: list[float | int] | None = None

    def validate_cell_emb_style(self):
        """Part of `@strict` validation: the pooling must be one `pool_cell_embedding` knows."""
        if self.cell_emb_style not in CELL_EMB_STYLES:
            raise ValueError(
                f"cell_emb_style={self.cell_emb_style!r}; use 'cls' (Geneformer V2) or 'mean' (V1)"
            )

    def to_bert_config(self) -> BertConfig:
        """The same architecture as a plain `BertConfig` (the official folder layout), without the cell fields."""
        fields = {k: v for k, v in self.to_dict().items() if k not in GENEFORMER_FIELDS and k != "model_type"}
        return BertConfig.from_dict(fields)


# The fields GeneformerConfig adds to BertConfig.
GENEFORMER_FIELDS = ("cell_emb_style", "cell_emb_layer", "class_weights")

GENEFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "V1-10M": {
        "hidden_size": 256,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 2048,
        "vocab_size": 25_426,
        "cell_emb_style": "mean",
    },
    "V2-104M": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 4096,
        "vocab_size": 20_275,
        "cell_emb_style": "cls",
    },
    "V2-316M": {
        "hidden_size": 1152,
        "num_hidden_layers": 18,
        "num_attention_heads": 18,
        "intermediate_size": 4608,
        "max_position_embeddings": 4096,
        "vocab_size": 20_275,
        "cell_emb_style": "cls",
    },
}


def geneformer_config(preset: str, **overrides: Any) -> GeneformerConfig:
    """A `GeneformerConfig` of a published Geneformer size (`"V1-10M"`, `"V2-104M"`, `"V2-316M"`).

    `overrides` replace any field, e.g. `num_labels=10` or a smaller `vocab_size` for a custom dictionary.
    """
    if preset not in GENEFORMER_PRESETS:
        raise InvalidInputError(
            f"Unknown Geneformer preset {preset!r}; choose one of {', '.join(GENEFORMER_PRESETS)}"
        )
    return _build({**GENEFORMER_PRESETS[preset], **overrides})


def geneformer_config_from_bert(
    config: BertConfig | Mapping[str, Any], where: str = "The config", **overrides: Any
) -> GeneformerConfig:
    """The `GeneformerConfig` of an official Geneformer config (a `BertConfig` or its config.json as a dict).

    Every field is kept (fields the official files lack take GeneformerConfig's defaults); `overrides` then
    set fields such as `num_labels` or `cell_emb_style` ("mean" for V1 checkpoints, which have no `<cls>`).
    `where` names the config's source in errors.
    """
    fields = dict(config.to_dict() if isinstance(config, BertConfig) else config)
    model_type = fields.pop("model_type", "bert")
    if model_type not in ("bert", GeneformerConfig.model_type):
        raise InvalidInputError(
            f"{where} holds a {model_type!r} model; Geneformer folders hold 'bert' (official) or 'geneformer'"
        )
    fields.pop("transformers_version", None)
    return _build({**fields, **overrides})


def _build(fields: dict[str, Any]) -> GeneformerConfig:
    """`GeneformerConfig.from_dict`, with a bad field reported as one line that names it."""
    try:
        return GeneformerConfig.from_dict(fields)
    except StrictDataclassError as err:
        raise InvalidInputError(f"Bad Geneformer config field: {err.__cause__ or err}") from err


def read_geneformer_config(folder: str | os.PathLike, **overrides: Any) -> GeneformerConfig:
    """The `GeneformerConfig` of a model folder: read as is from a "geneformer" folder, converted from an
    official "bert" one; `overrides` set fields (e.g. `num_labels`, `cell_emb_style`)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{folder} has no config.json; pass a Geneformer model folder")
    return geneformer_config_from_bert(json.loads(path.read_text()), str(folder), **overrides)
