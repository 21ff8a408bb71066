"""scGPT for batch integration: scGPT's integration objective (GEP + GEPC + ECS + DAB, with batch labels and DSBN)
on the unmodified backbone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .batch_modules import ScGPTBatchDiscriminator, ScGPTBatchEncoder, elastic_cell_similarity_loss
from .configuration_scgpt import ScGPTConfig
from .modeling_scgpt import ScGPTModel, ScGPTPreTrainedModel
from .modeling_scgpt_pretraining import ScGPTExprDecoder, ScGPTMVCDecoder, masked_mse, masked_zero_nll

LOSS_TERMS = ("gep", "gepc", "ecs", "dab")


@dataclass
class ScGPTBatchIntegrationOutput(ModelOutput):
    """Output of [`ScGPTForBatchIntegration`].

    Args:
        loss: weighted sum of the enabled terms (see `ScGPTConfig`'s integration weights).
        loss_terms: `[4]` the unweighted GEP, GEPC, ECS and DAB terms (0 where a term is off), for logging.
        expression / mvc_expression: `[batch, seq_len]` values predicted per gene and from the cell embedding.
        batch_logits: `[batch, num_batch_labels]` the discriminator's batch prediction (DAB only).
        cell_embedding: `[batch, hidden]`.
    """

    loss: torch.FloatTensor | None = None
    loss_terms: torch.FloatTensor | None = None
    expression: torch.FloatTensor | None = None
    mvc_expression: torch.FloatTensor | None = None
    batch_logits: torch.FloatTensor | None = None
    cell_embedding: torch.FloatTensor | None = None


class ScGPTForBatchIntegration(ScGPTPreTrainedModel):
    """scGPT with the integration heads: expression and MVC decoders (fed the batch embedding when
    `use_batch_labels`), optional DSBN inside the backbone, and the gradient-reversal batch discriminator."""

    def __init__(self, config: ScGPTConfig):
        super().__init__(config)
        self.scgpt = ScGPTModel(config)
        self.decoder = ScGPTExprDecoder(config)
        if config.use_mvc:
            self.mvc_decoder = ScGPTMVCDecoder(config)
        if config.use_batch_labels:
            self.batch_encoder = ScGPTBatchEncoder(config)
        if config.use_batch_discriminator:
            self.batch_discriminator = ScGPTBatchDiscriminator(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        batch_labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ScGPTBatchIntegrationOutput | tuple:
        r"""`labels`: `[batch, seq_len]` true expression values (the masked-value terms cover positions whose input
        equals `config.mask_value`); `batch_labels`: `[batch]` batch index per cell. Without `labels` no loss."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        needs_batches = (
            self.config.use_batch_labels
            or self.config.domain_spec_batchnorm
            or self.config.use_batch_discriminator
        )
        if needs_batches and batch_labels is None:
            raise ValueError("this model has batch modules: pass batch_labels ([batch], long)")
        outputs = self.scgpt(
            input_ids,
            values,
            attention_mask,
            inputs_embeds=inputs_embeds,
            batch_labels=batch_labels,
            return_dict=True,
        )
        hidden, cell_embedding = outputs.last_hidden_state, outputs.cell_embedding
        decoder_cell = cell_embedding
        if self.config.use_batch_labels:
            batch_embedding = self.batch_encoder(batch_labels.view(-1))
            hidden = torch.cat([hidden, batch_embedding.unsqueeze(1).expand(-1, hidden.shape[1], -1)], dim=2)
            decoder_cell = torch.cat([cell_embedding, batch_embedding], dim=1)
        expression, zero_probs = self.decoder(hidden)
        mvc_expression = mvc_zero_probs = None
        if self.config.use_mvc:
            mvc_expression, mvc_zero_probs = self.mvc_decoder(decoder_cell, outputs.gene_embeddings)
        batch_logits = None
        if self.config.use_batch_discriminator:
            batch_logits = self.batch_discriminator(cell_embedding)

        loss = loss_terms = None
        if labels is not None:
            terms = self.loss_terms(
                labels, values, expression, zero_probs, mvc_expression, mvc_zero_probs, cell_embedding,
                batch_logits, batch_labels,
            )  # fmt: skip
            weights = [getattr(self.config, f"{name}_weight") for name in LOSS_TERMS]
            loss = sum(weight * term for weight, term in zip(weights, terms, strict=True) if weight)
            loss_terms = torch.stack([term.detach() for term in terms])
        output = ScGPTBatchIntegrationOutput(
            loss=loss,
            loss_terms=loss_terms,
            expression=expression,
            mvc_expression=mvc_expression,
            batch_logits=batch_logits,
            cell_embedding=cell_embedding,
        )
        return output if return_dict else output.to_tuple()

    def loss_terms(
        self, labels, values, expression, zero_probs, mvc_expression, mvc_zero_probs, cell_embedding,
        batch_logits, batch_labels,
    ) -> list[torch.Tensor]:  # fmt: skip
        """Unweighted GEP, GEPC, ECS and DAB terms; a switched-off term is 0 (and not computed)."""
        config = self.config
        zero = expression.new_zeros(())
        labels = labels.to(expression.dtype)
        masked = values == config.mask_value
        gep = gepc = ecs = dab = zero
        if config.gep_weight:
            gep = masked_mse(expression, labels, masked)
            if zero_probs is not None:
                gep = gep + masked_zero_nll(zero_probs, labels, masked)
        if config.gepc_weight:
            if mvc_expression is None:
                raise ValueError("gepc_weight > 0 needs the MVC decoder (config.use_mvc=True)")
            gepc = masked_mse(mvc_expression, labels, masked)
            if mvc_zero_probs is not None:
                gepc = gepc + masked_zero_nll(mvc_zero_probs, labels, masked)
        if config.ecs_weight:
            ecs = elastic_cell_similarity_loss(cell_embedding, config.ecs_threshold)
        if config.dab_weight and batch_logits is not None:
            dab = F.cross_entropy(batch_logits, batch_labels.view(-1))
        return [gep, gepc, ecs, dab]
