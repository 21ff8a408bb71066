"""scGPT's batch-correction modules: batch-label embedding, domain-specific batch norm (DSBN), a gradient-reversal
batch discriminator (DAB), and the integration loss terms (ECS, DAB).

Ported from scGPT v0.2.4 (`BatchLabelEncoder`, `DomainSpecificBatchNorm1d`, `AdversarialDiscriminator`,
`grad_reverse`, the ECS term of `TransformerModel.forward`). Parameter and buffer names follow the official
state dict (`batch_encoder.*`, `dsbn.bns.<k>.*`), except the discriminator (official
`grad_reverse_discriminator._decoder.*`), which is `batch_discriminator.layers.*` here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_scgpt import ScGPTConfig

UNKNOWN_BATCH = -1  # batch label of cells from a batch the model was not trained on (embedding only)
DSBN_EPS = 6.1e-5  # the official DSBN's epsilon


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output.neg() * ctx.scale, None


def reverse_gradient(inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by `-scale`."""
    return _GradientReversal.apply(inputs, scale)


class ScGPTBatchEncoder(nn.Module):
    """Batch label -> vector (Embedding, LayerNorm); feeds the expression decoders, never the cell embedding.

    A label of `UNKNOWN_BATCH` gets the mean of the learnt batch embeddings.
    """

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.num_batch_labels, config.hidden_size)
        self.enc_norm = nn.LayerNorm(
            config.hidden_size
        )  # official: default eps, whatever layer_norm_eps says

    def forward(self, batch_labels: torch.Tensor) -> torch.Tensor:
        known = batch_labels >= 0
        rows = self.embedding(batch_labels.clamp(min=0))
        if not bool(known.all()):
            rows = torch.where(known.unsqueeze(-1), rows, self.embedding.weight.mean(0).expand_as(rows))
        return self.enc_norm(rows)


class ScGPTDomainSpecificBatchNorm(nn.Module):
    """One `BatchNorm1d` (affine=False) per batch on the input embeddings (gene + value) of every token.

    The official code normalises a whole mini-batch with the statistics of its first cell's batch (it expects
    mini-batches drawn from one batch) and counts padding tokens in the statistics. Here each cell is normalised
    with its own batch's statistics, over real tokens only; on a single-batch mini-batch without padding
    (scGPT's integration setting: all HVGs, zeros included) both are the same.

    Cells labelled `UNKNOWN_BATCH` (a batch never seen in training) are normalised in eval mode with the mean of
    all batches' running means and running variances; in training mode they are refused.
    """

    def __init__(self, config: ScGPTConfig):
        super().__init__()
        self.bns = nn.ModuleList(
            nn.BatchNorm1d(config.hidden_size, eps=DSBN_EPS, affine=False)
            for _ in range(config.num_batch_labels)
        )

    def forward(
        self, embeddings: torch.Tensor, batch_labels: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """`embeddings` [B, L, d], `batch_labels` [B], `keep` [B, L] (True = real token)."""
        if batch_labels.dim() != 1 or batch_labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"batch_labels must have shape [{embeddings.shape[0]}], got {tuple(batch_labels.shape)}"
            )
        if int(batch_labels.max()) >= len(self.bns) or int(batch_labels.min()) < UNKNOWN_BATCH:
            raise ValueError(
                f"batch label out of range: the model knows {len(self.bns)} batches (0..{len(self.bns) - 1}, or "
                f"{UNKNOWN_BATCH} for an unseen batch), got labels {sorted(set(batch_labels.tolist()))}"
            )
        normalised = embeddings.clone()
        for label in batch_labels.unique().tolist():
            selected = (batch_labels == label).unsqueeze(1) & keep
            tokens = embeddings[selected]
            if label == UNKNOWN_BATCH:
                normalised[selected] = self._normalise_with_mean_statistics(tokens)
            else:
                normalised[selected] = self.bns[label](tokens)
        return normalised

    def _normalise_with_mean_statistics(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ValueError(
                f"batch label {UNKNOWN_BATCH} (a batch not seen in training) is only allowed in eval mode; "
                "train with every batch's own label"
            )
        mean = torch.stack([bn.running_mean for bn in self.bns]).mean(0)
        var = torch.stack([bn.running_var for bn in self.bns]).mean(0)
        return (tokens - mean) / torch.sqrt(var + DSBN_EPS)


class ScGPTBatchDiscriminator(nn.Module):
    """Predicts each cell's batch from its embedding through a gradient-reversal layer (scGPT's DAB).

    Minimising its cross-entropy trains the discriminator to tell batches apart, and, through the reversed
    gradient, the encoder to make them indistinguishable. Official: (3 - 1) x [Linear, LeakyReLU, LayerNorm], then
    the output Linear.
    """

    def __init__(self, config: ScGPTConfig, num_layers: int = 3):
        super().__init__()
        d = config.hidden_size
        self.layers = nn.ModuleList()
        for _ in range(num_layers - 1):
            self.layers.extend([nn.Linear(d, d), nn.LeakyReLU(), nn.LayerNorm(d)])
        self.out_layer = nn.Linear(d, config.num_batch_labels)

    def forward(self, cell_embedding: torch.Tensor) -> torch.Tensor:
        hidden = reverse_gradient(cell_embedding)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.out_layer(hidden)


def elastic_cell_similarity_loss(cell_embedding: torch.Tensor, threshold: float) -> torch.Tensor:
    """scGPT's ECS: mean over all cell pairs (diagonal as 0) of `1 - (relu(cos) - threshold)^2`.

    Pushes positive cosine similarities between cells of a mini-batch away from `threshold`: pairs above it
    closer together, pairs below it further apart.
    """
    normed = F.normalize(cell_embedding, p=2, dim=1)
    cosine = normed @ normed.t()
    cosine = cosine.masked_fill(torch.eye(cosine.shape[0], dtype=torch.bool, device=cosine.device), 0.0)
    return torch.mean(1 - (F.relu(cosine) - threshold) ** 2)
