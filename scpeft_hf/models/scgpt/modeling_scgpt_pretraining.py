"""scGPT's pretraining objective on the backbone: masked expression values predicted per gene from each gene's output
(GEP, ``ExprDecoder``) and from the cell embedding (GEPC/MVC, ``MVCDecoder``), with scGPT's masked losses. The
integration model (`modeling_scgpt_integration.py`) reuses these decoders and losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_scgpt import ScGPTConfig
from .modeling_scgpt import ScGPTModel, ScGPTPreTrainedModel


@dataclass
class ScGPTMaskedExpressionOutput(ModelOutput):
    """Output of [`ScGPTForMaskedExpressionModeling`].

    Args:
        loss: masked-value MSE of the expression decoder (+ the MVC decoder's, + zero-probability terms).
        expression: `[batch, seq_len]` expression predicted per gene token from its own output (`mlm_output`).
        mvc_expression: `[batch, seq_len]` expression predicted from the cell embedding and the gene query.
        zero_probs / mvc_zero_probs: predicted probability that a gene is zero (`explicit_zero_prob` only).
    """

    loss: torch.FloatTensor | None = None
    expression: torch.FloatTensor | None = None
    mvc_expression: torch.FloatTensor | None = None
    zero_probs: torch.FloatTensor | None = None
    mvc_zero_probs: torch.FloatTensor | None = None
    cell_embedding: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _expression_mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1))


def _decoder_input_size(config: ScGPTConfig) -> int:
    """With batch labels, scGPT's decoders read [output; batch embedding]: twice the hidden size."""
    return 2 * config.hidden_size if config.use_batch_labels else config.hidden_size


class ScGPTExprDecoder(nn.Module):
    """Per-gene expression from the gene's own output (scGPT's ``ExprDecoder``)."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.fc = _expression_mlp(_decoder_input_size(config), config.hidden_size)
        if config.explicit_zero_prob:
            self.zero_logit = _expression_mlp(_decoder_input_size(config), config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        prediction = self.fc(hidden_states).squeeze(-1)
        if not hasattr(self, "zero_logit"):
            return prediction, None
        return prediction, torch.sigmoid(self.zero_logit(hidden_states).squeeze(-1))


class ScGPTMVCDecoder(nn.Module):
    """Masked value prediction from the cell embedding (scGPT's "inner product" ``MVCDecoder``)."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        d = config.hidden_size
        self.gene2query = nn.Linear(d, d)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d, _decoder_input_size(config), bias=False)
        if config.explicit_zero_prob:
            self.W_zero_logit = nn.Linear(d, _decoder_input_size(config))

    def forward(
        self, cell_embedding: torch.Tensor, gene_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        queries = self.query_activation(self.gene2query(gene_embeddings))
        cell = cell_embedding.unsqueeze(2)
        prediction = torch.bmm(self.W(queries), cell).squeeze(2)
        if not hasattr(self, "W_zero_logit"):
            return prediction, None
        return prediction, torch.sigmoid(torch.bmm(self.W_zero_logit(queries), cell).squeeze(2))


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked positions only (scGPT's ``masked_mse_loss``)."""
    masked = masked.to(prediction.dtype)
    return F.mse_loss(prediction * masked, target * masked, reduction="sum") / masked.sum().clamp(min=1)


def masked_zero_nll(zero_probs: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood of "is non-zero" over masked positions (scGPT's zero-prob loss)."""
    log_probs = torch.distributions.Bernoulli(probs=zero_probs).log_prob((target > 0).to(zero_probs.dtype))
    masked = masked.to(zero_probs.dtype)
    return -(log_probs * masked).sum() / masked.sum().clamp(min=1)


class ScGPTForMaskedExpressionModeling(ScGPTPreTrainedModel):
    """scGPT's pretraining model: masked expression values are predicted per gene (GEP) and from the cell
    embedding (GEPC/MVC)."""

    def __init__(self, config: ScGPTConfig):
        super().__init__(config)
        self.scgpt = ScGPTModel(config)
        self.decoder = ScGPTExprDecoder(config)
        if config.use_mvc:
            self.mvc_decoder = ScGPTMVCDecoder(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ScGPTMaskedExpressionOutput | tuple:
        r"""`labels`: `[batch, seq_len]` true expression values; the loss covers positions whose input value
        equals `config.mask_value`."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.scgpt(
            input_ids,
            values,
            attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        expression, zero_probs = self.decoder(outputs.last_hidden_state)
        mvc_expression = mvc_zero_probs = None
        if self.config.use_mvc:
            mvc_expression, mvc_zero_probs = self.mvc_decoder(outputs.cell_embedding, outputs.gene_embeddings)
        loss = None
        if labels is not None:
            labels = labels.to(expression.dtype)
            masked = values == self.config.mask_value
            loss = masked_mse(expression, labels, masked)
            if zero_probs is not None:
                loss = loss + masked_zero_nll(zero_probs, labels, masked)
            if mvc_expression is not None:
                loss = loss + masked_mse(mvc_expression, labels, masked)
                if mvc_zero_probs is not None:
                    loss = loss + masked_zero_nll(mvc_zero_probs, labels, masked)
        output = ScGPTMaskedExpressionOutput(
            loss=loss,
            expression=expression,
            mvc_expression=mvc_expression,
            zero_probs=zero_probs,
            mvc_zero_probs=mvc_zero_probs,
            cell_embedding=outputs.cell_embedding,
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()
