"""Cell-level heads on Geneformer's BERT, and loading of official Geneformer checkpoint folders.

Every class wraps transformers' own `BertModel` under the attribute `bert`, so a `BertForMaskedLM` checkpoint
(`config.json` + `model.safetensors`, or `pytorch_model.bin` read with `weights_only=True`) loads into them
unchanged and every peft tuner sees the module names it knows from BERT. Their `config_class` is
`GeneformerConfig` (`model_type` "geneformer"), which the Auto classes map to these classes; `load_geneformer`
also reads official folders, whose config.json says "bert", converting their config on load.

The annotation head reads the first token's last-layer state (`<cls>` in V2, the top-ranked gene in V1), as
`BertForSequenceClassification` does, but without BERT's pooler: a masked-LM checkpoint has no pooler weights,
and a randomly initialised pooler would stay frozen (and unsaved) under an adapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel, BertPreTrainedModel, PreTrainedModel
from transformers.utils import ModelOutput

from ...errors import InvalidInputError, MissingFileError
from ..heads import warn_if_head_frozen
from .configuration_geneformer import GeneformerConfig, geneformer_config_from_bert, read_geneformer_config

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CellEmbStyle = Literal["cls", "mean"]


@dataclass
class GeneformerOutput(ModelOutput):
    """Output of the Geneformer heads.

    Args:
        loss: cross-entropy (weighted by `config.class_weights` when set), when `labels` are given.
        logits: `[batch, num_labels]` class scores ([`GeneformerForCellClassification`] only).
        cell_embedding: `[batch, hidden]` one vector per cell: layer `config.cell_emb_layer` (default -2, the
            second-to-last layer as in Geneformer's EmbExtractor) pooled by `config.cell_emb_style`.
        hidden_states: embeddings plus every layer's output, when `output_hidden_states=True`.
        attentions: every layer's attention probabilities, when `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cell_embedding: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def pool_cell_embedding(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, style: CellEmbStyle
) -> torch.Tensor:
    """One vector per cell: the first (`<cls>`) token for "cls", the mean over real tokens for "mean"."""
    if style == "cls":
        return hidden_states[:, 0, :]
    if style != "mean":
        raise ValueError(f"cell_emb_style={style!r}; use 'cls' (Geneformer V2) or 'mean' (V1)")
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def _as_geneformer_config(config: BertConfig) -> GeneformerConfig:
    """Models built from a plain `BertConfig` (as before GeneformerConfig existed) get its Geneformer form."""
    return config if isinstance(config, GeneformerConfig) else geneformer_config_from_bert(config)


class GeneformerPreTrainedModel(BertPreTrainedModel):
    """BERT's weight initialisation and loading under `GeneformerConfig`, with BERT's module names (`bert.*`)."""

    config_class = GeneformerConfig
    base_model_prefix = "bert"
    # The forward takes **kwargs (attention options for BERT), but its loss is a plain mean: Trainer must not
    # pass num_items_in_batch or multiply the loss by the world size under DDP.
    accepts_loss_kwargs = False

    def __init__(self, config: GeneformerConfig):
        config = _as_geneformer_config(config)
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)

    def _encode(self, input_ids, attention_mask, kwargs) -> tuple[dict, torch.Tensor, torch.Tensor]:
        wants_hidden_states = bool(kwargs.pop("output_hidden_states", False))
        kwargs.pop("return_dict", None)
        outputs = self.bert(
            input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True, **kwargs
        )
        cell_embedding = pool_cell_embedding(
            outputs.hidden_states[self.config.cell_emb_layer], attention_mask, self.config.cell_emb_style
        )
        extras = {
            "hidden_states": outputs.hidden_states if wants_hidden_states else None,
            "attentions": outputs.attentions,
        }
        return extras, outputs.last_hidden_state, cell_embedding


class GeneformerModel(GeneformerPreTrainedModel):
    """Geneformer's encoder returning cell embeddings (`GeneformerOutput.cell_embedding`), for `embed`."""

    def __init__(self, config: GeneformerConfig):
        super().__init__(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> GeneformerOutput:
        kwargs.pop("labels", None)
        extras, _, cell_embedding = self._encode(input_ids, attention_mask, kwargs)
        return GeneformerOutput(cell_embedding=cell_embedding, **extras)


class GeneformerForCellClassification(GeneformerPreTrainedModel):
    """Cell-type annotation on Geneformer: dropout and a linear `classifier` on the first token's state."""

    def __init__(self, config: GeneformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> GeneformerOutput:
        r"""`labels`: `[batch]` class indices; the loss is cross-entropy weighted by `config.class_weights`."""
        extras, last_hidden_state, cell_embedding = self._encode(input_ids, attention_mask, kwargs)
        logits = self.classifier(self.dropout(last_hidden_state[:, 0, :]))
        loss = None
        if labels is not None:
            if self.training and torch.is_grad_enabled():
                warn_if_head_frozen(self, self.classifier)
            class_weights = self.config.class_weights
            weight = (
                torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
                if class_weights is not None
                else None
            )
            loss = nn.functional.cross_entropy(
                logits.view(-1, self.num_labels), labels.view(-1), weight=weight
            )
        return GeneformerOutput(loss=loss, logits=logits, cell_embedding=cell_embedding, **extras)


class GeneformerForMaskedLM(BertForMaskedLM):
    """Geneformer's pretraining model (BERT's masked-LM head) under `GeneformerConfig`: what an official folder
    holds, so `load_geneformer(folder, "masked_lm").save_pretrained(out)` re-saves it as a "geneformer" folder."""

    config_class = GeneformerConfig

    def __init__(self, config: GeneformerConfig):
        super().__init__(_as_geneformer_config(config))


def check_vocab_size(
    config: BertConfig, dictionary_size: int, where: str | os.PathLike = "the model"
) -> None:
    """Raise unless the model's embedding rows match the token dictionary one to one."""
    if config.vocab_size != dictionary_size:
        raise InvalidInputError(
            f"{where} has vocab_size {config.vocab_size:,} but the token dictionary has {dictionary_size:,} "
            f"tokens; use the dictionary the checkpoint was trained with (V1-10M: 25,426 tokens, "
            f"V2: 20,275 tokens, token_dictionary_gc104M.pkl)"
        )


GeneformerTask = Literal["classification", "embedding", "masked_lm"]
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "classification": GeneformerForCellClassification,
    "embedding": GeneformerModel,
    "masked_lm": GeneformerForMaskedLM,
}


def load_geneformer(
    folder: str | os.PathLike,
    task: GeneformerTask = "classification",
    *,
    dictionary_size: int | None = None,
    **kwargs,
) -> GeneformerPreTrainedModel | GeneformerForMaskedLM:
    """Load a Geneformer folder: official (`model_type` "bert") or written by us ("geneformer").

    The one entry point for official checkpoints: their config converts to `GeneformerConfig` on load, so the
    model returned saves as a "geneformer" folder, which the Auto classes then read as well. `task` picks the
    model: "classification" (`GeneformerForCellClassification`, a new `classifier` unless the folder has one),
    "embedding" (`GeneformerModel`) or "masked_lm" (`GeneformerForMaskedLM`, keeping the pretraining head).
    `.bin` weights are read with `torch.load(weights_only=True)`. `dictionary_size` (the token dictionary's
    length) is checked against `vocab_size` before any weight is read. `kwargs` set config fields (e.g.
    `num_labels`, and `cell_emb_style="mean"` for V1 checkpoints, which have no `<cls>`).
    """
    folder = Path(folder)
    if task not in MODEL_CLASSES:
        raise InvalidInputError(f"task={task!r}; choose one of {', '.join(MODEL_CLASSES)}")
    config = read_geneformer_config(folder, **kwargs)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise MissingFileError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    if dictionary_size is not None:
        check_vocab_size(config, dictionary_size, folder)
    return MODEL_CLASSES[task].from_pretrained(folder, config=config, weights_only=True)
