"""scGPT as a Hugging Face model: gene + expression-value embeddings, a BERT-shaped encoder, and the cell
classification head (the pretraining heads are in `modeling_scgpt_pretraining.py`, the integration heads in
`modeling_scgpt_integration.py`).

Port of scGPT v0.2.4 ``TransformerModel``. Module boundaries follow BERT (``attention.self``,
``attention.output``, ``intermediate``, ``output``) so that peft tuners target scGPT and Geneformer alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from ..heads import CLASSIFIER_NAME, LEGACY_CLASSIFIER_NAMES, warn_if_head_frozen
from .batch_modules import ScGPTDomainSpecificBatchNorm
from .configuration_scgpt import ScGPTConfig

# ----------------------------------------------------------------------------------------------- outputs


@dataclass
class ScGPTModelOutput(ModelOutput):
    """Output of [`ScGPTModel`].

    Args:
        last_hidden_state: `[batch, seq_len, hidden]` per-gene outputs of the last layer.
        cell_embedding: `[batch, hidden]` one vector per cell (see `config.cell_emb_style`).
        gene_embeddings: `[batch, seq_len, hidden]` normalised gene-token embeddings (the MVC decoder's queries).
        hidden_states: embeddings plus every layer's output, when `output_hidden_states=True`.
        attentions: every layer's attention probabilities, when `output_attentions=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cell_embedding: torch.FloatTensor | None = None
    gene_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class ScGPTCellClassifierOutput(ModelOutput):
    """Output of [`ScGPTForCellClassification`]: `logits` `[batch, num_labels]` and the cross-entropy `loss`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cell_embedding: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# -------------------------------------------------------------------------------------------- embeddings


class ScGPTGeneEncoder(nn.Module):
    """Gene token embedding followed by LayerNorm (scGPT's ``GeneEncoder``)."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.enc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        return self.enc_norm(inputs_embeds)


class ScGPTContinuousValueEncoder(nn.Module):
    """Scalar expression value -> vector: clamp, Linear(1, d), ReLU, Linear(d, d), LayerNorm, dropout."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.max_value = config.max_value
        self.linear1 = nn.Linear(1, config.hidden_size)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        values = torch.clamp(values.unsqueeze(-1), max=self.max_value).to(self.linear1.weight.dtype)
        return self.dropout(self.norm(self.linear2(self.activation(self.linear1(values)))))


class ScGPTCategoryValueEncoder(nn.Module):
    """Binned expression value -> vector: one embedding row per bin, then LayerNorm."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.n_bins + 1, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pad_value = config.pad_value
        self.mask_value = config.mask_value
        self.n_bins = config.n_bins

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        # Padding and masked positions share the extra row `n_bins`; padding is masked out in attention anyway.
        special = (values == self.pad_value) | (values == self.mask_value)
        bins = torch.where(special, torch.full_like(values, self.n_bins), values).long()
        return self.norm(self.embedding(bins))


class ScGPTEmbeddings(nn.Module):
    """Cell input embedding: gene-token embedding + expression-value embedding (no positional encoding)."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.gene_encoder = ScGPTGeneEncoder(config)
        if config.input_emb_style == "continuous":
            self.value_encoder = ScGPTContinuousValueEncoder(config)
        else:
            self.value_encoder = ScGPTCategoryValueEncoder(config)

    def forward(
        self, input_ids: torch.Tensor | None, values: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gene_embeddings = self.gene_encoder(input_ids, inputs_embeds)
        return gene_embeddings + self.value_encoder(values), gene_embeddings


# --------------------------------------------------------------------------------------------- attention


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention that also returns the probabilities. `attention_mask` is additive."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class ScGPTSelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (peft LoRA targets them by name)."""

    is_causal = False  # read by transformers' SDPA function

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        shape = (batch, seq_len, self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)

        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        if attention_mask is not None:
            attention_mask = _mask_for(implementation, attention_mask, query.dtype)
        context, probs = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.scaling,
        )
        return context.reshape(batch, seq_len, -1), probs


def _mask_for(implementation: str, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean keep-mask (True = attend) into what the attention function expects."""
    if implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class ScGPTSelfOutput(nn.Module):
    """Attention output projection + dropout + residual (+ LayerNorm in the post-norm layer).

    The encoder adapter wraps this module, so it sees `norm1(x + SA(x))` exactly where scPEFT puts it.
    """

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states)) + input_tensor
        return hidden_states if self.pre_norm else self.LayerNorm(hidden_states)


class ScGPTAttention(nn.Module):
    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.self = ScGPTSelfAttention(config)
        self.output = ScGPTSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            # scGPT's pre-norm layer adds the residual to the normalised input (not to the raw input).
            hidden_states = self.output.LayerNorm(hidden_states)
        context, probs = self.self(hidden_states, attention_mask, output_attentions)
        return self.output(context, hidden_states), probs


class ScGPTIntermediate(nn.Module):
    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.intermediate_act_fn(self.dense(hidden_states)))


class ScGPTOutput(nn.Module):
    """Feed-forward down projection + dropout + residual (+ LayerNorm in the post-norm layer)."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states)) + input_tensor
        return hidden_states if self.pre_norm else self.LayerNorm(hidden_states)


class ScGPTLayer(GradientCheckpointingLayer):
    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attention = ScGPTAttention(config)
        self.intermediate = ScGPTIntermediate(config)
        self.output = ScGPTOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_states, probs = self.attention(hidden_states, attention_mask, output_attentions)
        if self.pre_norm:
            hidden_states = self.output.LayerNorm(hidden_states)
        return self.output(self.intermediate(hidden_states), hidden_states), probs


class ScGPTEncoder(nn.Module):
    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.layer = nn.ModuleList([ScGPTLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ScGPTModelOutput:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_probs = () if output_attentions else None
        for layer in self.layer:
            hidden_states, probs = layer(
                hidden_states, attention_mask=attention_mask, output_attentions=output_attentions
            )
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_probs += (probs,)
        return ScGPTModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden, attentions=all_probs
        )


# ------------------------------------------------------------------------------------------------ models


class ScGPTPreTrainedModel(PreTrainedModel):
    config_class = ScGPTConfig
    config: ScGPTConfig
    base_model_prefix = "scgpt"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["ScGPTLayer"]
    # The loss is a plain mean; Trainer must not rescale it by num_items_in_batch or the world size.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # scGPT initialises gene embeddings uniformly in [-0.1, 0.1]; the padding row stays zero.
            init.uniform_(module.weight, -0.1, 0.1)
            if module.padding_idx is not None:
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            # DSBN has buffers only (affine=False), and base checkpoints lack them.
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class ScGPTModel(ScGPTPreTrainedModel):
    """The scGPT backbone: embeddings and encoder layers, returning per-gene outputs and a cell embedding."""

    def __init__(self, config: ScGPTConfig):
        super().__init__(config)
        self.embeddings = ScGPTEmbeddings(config)
        if config.domain_spec_batchnorm:
            self.dsbn = ScGPTDomainSpecificBatchNorm(config)
        self.encoder = ScGPTEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.gene_encoder.embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.gene_encoder.embedding = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        batch_labels: torch.LongTensor | None = None,
    ) -> ScGPTModelOutput | tuple:
        r"""
        Args:
            input_ids: `[batch, seq_len]` gene token ids, `<cls>` first.
            values: `[batch, seq_len]` binned expression values (`pad_value` at padding, `mask_value` where masked).
            attention_mask: `[batch, seq_len]`, 1 for real tokens and 0 for padding. Derived from
                `input_ids != pad_token_id` when omitted.
            inputs_embeds: `[batch, seq_len, hidden]` raw gene embeddings to use instead of looking up `input_ids`.
            batch_labels: `[batch]` batch index of each cell (`config.domain_spec_batchnorm` only; -1 = unseen batch).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if values is None:
            raise ValueError(
                "scGPT needs expression `values` ([batch, seq_len], binned) next to the gene ids"
            )
        output_attentions = (
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if attention_mask is None:
            attention_mask = (
                input_ids != self.config.pad_token_id
                if input_ids is not None
                else torch.ones(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
            )
        keep = attention_mask.bool()

        embedding_output, gene_embeddings = self.embeddings(input_ids, values, inputs_embeds)
        if self.config.domain_spec_batchnorm:
            if batch_labels is None:
                raise ValueError(
                    "this model has domain-specific batch norm: pass batch_labels ([batch], long)"
                )
            embedding_output = self.dsbn(embedding_output, batch_labels.view(-1).to(keep.device), keep)
        # Broadcast over heads and queries; None lets SDPA pick its fastest kernel when nothing is padded.
        layer_mask = None if bool(keep.all()) else keep[:, None, None, :]
        encoded = self.encoder(
            embedding_output,
            attention_mask=layer_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        cell_embedding = self.cell_embedding(encoded.last_hidden_state, values, keep)
        output = ScGPTModelOutput(
            last_hidden_state=encoded.last_hidden_state,
            cell_embedding=cell_embedding,
            gene_embeddings=gene_embeddings,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()

    def cell_embedding(
        self, hidden_states: torch.Tensor, values: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Pool per-gene outputs into one vector per cell.

        Unlike the official code, pooling ignores padding: official `avg-pool` averages padded positions too
        and `w-pool` weights them by `pad_value`, which makes a cell's embedding depend on its batch.
        """
        style = self.config.cell_emb_style
        if style == "cls":
            return hidden_states[:, 0, :]
        weights = keep.to(hidden_states.dtype)
        if style == "avg-pool":
            return (hidden_states * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
        weights = weights * values.to(hidden_states.dtype)
        return F.normalize((hidden_states * weights.unsqueeze(-1)).sum(1), p=2, dim=1)


# ------------------------------------------------------------------------------------------------- heads


class ScGPTClsDecoder(nn.Module):
    """scGPT's classifier: (num_cls_layers - 1) x [Linear, ReLU, LayerNorm], then the output Linear."""

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        d = config.hidden_size
        self.layers = nn.ModuleList()
        for _ in range(config.num_cls_layers - 1):
            self.layers.extend([nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d, eps=config.layer_norm_eps)])
        self.out_layer = nn.Linear(d, config.num_labels)

    def forward(self, cell_embedding: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            cell_embedding = layer(cell_embedding)
        return self.out_layer(cell_embedding)


class ScGPTForCellClassification(ScGPTPreTrainedModel):
    """scGPT with its classification head `classifier` on the cell embedding (cell-type annotation).

    The official code calls the head `cls_decoder`; it is named `classifier` here, as in transformers, because
    that is the name peft's `task_type="SEQ_CLS"` trains and saves. Adapters saved with `cls_decoder.*` weights
    load through `_checkpoint_conversion_mapping`, which peft applies to adapter weights.
    """

    _checkpoint_conversion_mapping = {rf"^{old}\.": f"{CLASSIFIER_NAME}." for old in LEGACY_CLASSIFIER_NAMES}

    def __init__(self, config: ScGPTConfig):
        super().__init__(config)
        self.scgpt = ScGPTModel(config)
        self.classifier = ScGPTClsDecoder(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ScGPTCellClassifierOutput | tuple:
        r"""`labels`: `[batch]` class indices; the loss is cross-entropy weighted by `config.class_weights`."""
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
        logits = self.classifier(outputs.cell_embedding)
        loss = None
        if labels is not None:
            if self.training and torch.is_grad_enabled():
                warn_if_head_frozen(self, self.classifier)
            weight = None
            if self.config.class_weights is not None:
                weight = torch.tensor(self.config.class_weights, dtype=logits.dtype, device=logits.device)
            loss = F.cross_entropy(logits, labels.view(-1).to(logits.device), weight=weight)
        output = ScGPTCellClassifierOutput(
            loss=loss,
            logits=logits,
            cell_embedding=outputs.cell_embedding,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()
