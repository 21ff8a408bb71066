"""Batched forward passes over a tokenized dataset: logits and cell embeddings for every cell, in order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader


@dataclass
class ForwardResult:
    logits: np.ndarray | None
    cell_embeddings: np.ndarray


@torch.inference_mode()
def run_model(model: torch.nn.Module, dataset, collator, batch_size: int = 64) -> ForwardResult:
    """Run `model` in eval mode over `dataset` (kept in order). Returns float32 numpy arrays on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, embeddings = [], []
    columns = [name for name in dataset.column_names if name != "labels"]
    loader = DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator, shuffle=False
    )
    for batch in loader:
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        outputs = model(**batch)
        if getattr(outputs, "logits", None) is not None:
            logits.append(outputs.logits.float().cpu())
        # a copy: the <cls> row is a view that would keep the batch's whole [B, L, d] hidden states alive
        embeddings.append(outputs.cell_embedding.float().cpu().clone())
    model.train(was_training)
    return ForwardResult(
        logits=torch.cat(logits).numpy() if logits else None,
        cell_embeddings=torch.cat(embeddings).numpy(),
    )
