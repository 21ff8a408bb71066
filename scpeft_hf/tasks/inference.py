"""Batched forward passes over a tokenized dataset: logits and cell embeddings for every cell, in order, at the
precision the `--precision` flag names (see `training_knobs.autocast`), with a progress bar on a terminal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .training_knobs import autocast


@dataclass
class ForwardResult:
    logits: np.ndarray | None
    cell_embeddings: np.ndarray


def progress_bar(iterable, total: int, progress: bool, description: str):
    """`iterable` wrapped in a tqdm bar of `total` cells when `progress` is on and stderr is a terminal."""
    return tqdm(iterable, total=total, desc=description, unit="cell", disable=None if progress else True)


@torch.inference_mode()
def run_model(
    model: torch.nn.Module,
    dataset,
    collator,
    batch_size: int = 64,
    *,
    precision: str = "auto",
    progress: bool = True,
    description: str = "cells",
) -> ForwardResult:
    """Run `model` in eval mode over `dataset` (kept in order), on the device it sits on, under autocast for
    `precision` "bf16"/"fp16" ("auto": bf16 on a CUDA GPU that supports it, fp32 on the CPU). Returns float32
    numpy arrays on the CPU. `progress` shows a bar (in cells) when stderr is a terminal."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, embeddings = [], []
    columns = [name for name in dataset.column_names if name != "labels"]
    loader = DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator, shuffle=False
    )
    with autocast(precision, device), progress_bar(None, len(dataset), progress, description) as bar:
        for batch in loader:
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            outputs = model(**batch)
            if getattr(outputs, "logits", None) is not None:
                logits.append(outputs.logits.float().cpu())
            # a copy: the <cls> row is a view that would keep the batch's whole [B, L, d] hidden states alive
            embeddings.append(outputs.cell_embedding.float().cpu().clone())
            bar.update(len(embeddings[-1]))
    model.train(was_training)
    return ForwardResult(
        logits=torch.cat(logits).numpy() if logits else None,
        cell_embeddings=torch.cat(embeddings).numpy(),
    )
