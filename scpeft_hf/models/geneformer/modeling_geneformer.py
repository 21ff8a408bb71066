"""Cell-level heads on Geneformer's BERT, and loading of official Geneformer checkpoint folders.

Both heads wrap transformers' own `BertModel` under the attribute `bert`, so a `BertForMaskedLM` checkpoint
(`config.json` + `model.safetensors`, or `pytorch_model.bin` read with `weights_only=True`) loads into them
unchanged and every peft tuner sees the module names it knows from BERT.

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
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.utils import ModelOutput

from ...errors import InvalidInputError, MissingFileError
from ..heads import warn_if_head_frozen

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


class _GeneformerBase(BertPreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    # The forward takes **kwargs (attention options for BERT), but its loss is a plain mean: Trainer must not
    # pass num_items_in_batch or multiply the loss by the world size under DDP.
    accepts_loss_kwargs = False

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)

    def _encode(self, input_ids, attention_mask, kwargs) -> tuple[dict, torch.Tensor, torch.Tensor]:
        wants_hidden_states = bool(kwargs.pop("output_hidden_states", False))
        kwargs.pop("return_dict", None)
        outputs = self.bert(
            input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True, **kwargs
        )
        layer = getattr(self.config, "cell_emb_layer", -2)
        style = getattr(self.config, "cell_emb_style", "cls")
        cell_embedding = pool_cell_embedding(outputs.hidden_states[layer], attention_mask, style)
        extras = {
            "hidden_states": outputs.hidden_states if wants_hidden_states else None,
            "attentions": outputs.attentions,
        }
        return extras, outputs.last_hidden_state, cell_embedding


class GeneformerModel(_GeneformerBase):
    """Geneformer's encoder returning cell embeddings (`GeneformerOutput.cell_embedding`), for `embed`."""

    def __init__(self, config: BertConfig):
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


class GeneformerForCellClassification(_GeneformerBase):
    """Cell-type annotation on Geneformer: dropout and a linear `classifier` on the first token's state."""

    def __init__(self, config: BertConfig):
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
            class_weights = getattr(self.config, "class_weights", None)
            weight = (
                torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
                if class_weights is not None
                else None
            )
            loss = nn.functional.cross_entropy(
                logits.view(-1, self.num_labels), labels.view(-1), weight=weight
            )
        return GeneformerOutput(loss=loss, logits=logits, cell_embedding=cell_embedding, **extras)


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


def load_geneformer(
    folder: str | os.PathLike,
    task: Literal["classification", "embedding"] = "classification",
    *,
    dictionary_size: int | None = None,
    **kwargs,
) -> GeneformerForCellClassification | GeneformerModel:
    """Load an official Geneformer folder (`config.json` + `model.safetensors` or `pytorch_model.bin`).

    `.bin` weights are read with `torch.load(weights_only=True)`; the masked-LM head is dropped and the
    classifier (for "classification") initialised. `dictionary_size` (the token dictionary's length) is checked
    against `vocab_size` before any weight is read. `kwargs` set config fields (e.g. `num_labels`, `cell_emb_style`).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{folder} has no config.json; pass a Geneformer model folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise MissingFileError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    model_class = GeneformerForCellClassification if task == "classification" else GeneformerModel
    config = BertConfig.from_pretrained(folder)
    if config.model_type != "bert":
        raise InvalidInputError(
            f"{folder} holds a {config.model_type!r} model; Geneformer folders hold 'bert'"
        )
    if dictionary_size is not None:
        check_vocab_size(config, dictionary_size, folder)
    for name, value in kwargs.items():
        setattr(config, name, value)
    return model_class.from_pretrained(folder, config=config, weights_only=True)
