"""Collators that pad tokenized cells into model batches for `transformers.Trainer`: `ScGPTDataCollator` (gene ids
and binned values, with subsampling and masking) and `GeneformerDataCollator` (rank-value encoded gene ids).

scGPT:

Over-long cells (more than `max_length` tokens, `<cls>` included) are cut to `<cls>` plus `max_length - 1`
genes drawn without replacement, kept in their original order. In training mode, rows that carry their
dataset index (the `index_column`, "cell_index") draw from a generator seeded by (`seed`, `epoch`, index)
alone: each epoch sees other genes, and the stream is the same for any number of DataLoader workers or DDP
ranks, and after a resume (set the epoch with `set_epoch`; `CollatorEpochCallback` does it for `Trainer`).
Rows without the index fall back to one seeded generator per worker that advances with every batch. In eval
mode every cell gets its own generator seeded by (`seed`, CRC32 of its gene ids), so a cell always gets the
same genes, whatever batch or order it comes in. Masking for masked-expression pretraining follows the same rule.

`transformers.Trainer` collates training and evaluation batches with the same collator: give it one in
training mode, and for reproducible evaluation switch it around `evaluate()`/`predict()`
(`trainer.data_collator = collator.eval()`, then `.train()` again), or override `get_eval_dataloader`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import TrainerCallback

from ..errors import InvalidInputError


class _CollatorMode:
    """Training/eval switch shared by the collators (`Trainer` uses one collator for both)."""

    training: bool

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)


def _class_labels(features: Sequence[dict]) -> torch.Tensor | None:
    if "labels" in features[0] and features[0]["labels"] is not None:
        return torch.tensor([row["labels"] for row in features], dtype=torch.long)
    return None


@dataclass
class ScGPTDataCollator(_CollatorMode):
    """Batch `input_ids`/`values` (+ `labels`) rows of an :class:`~scpeft_hf.data.ScGPTProcessor` Dataset.

    Args:
        pad_token_id: id of `<pad>` in the vocabulary.
        pad_value: value at padded positions.
        mask_value: value replacing masked expression values.
        max_length: longest sequence, `<cls>` included; longer cells are subsampled (see module docstring).
        mlm_probability: if > 0, masked-expression pretraining: in each cell, `floor(p * genes)` gene values
            (never `<cls>`, never padding) become `mask_value`, and `labels` become the float [B, L] true
            values (class labels are dropped).
        seed: seeds subsampling and masking.
        training: training mode (fresh draws per batch) or eval mode (fixed per cell); see `train()`/`eval()`.

    Returns from a call: `input_ids` (long), `values` (float32), `attention_mask` (long, 1 = real token),
    `labels` (long class ids when the rows have them, or float values with `mlm_probability > 0`), and
    `batch_labels` (long) when the rows have them.
    """

    pad_token_id: int
    pad_value: float = -2
    mask_value: float = -1
    max_length: int = 1200
    mlm_probability: float = 0.0
    seed: int = 0
    training: bool = True
    index_column: str = "cell_index"
    epoch: int = 0

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} leaves no room for genes after <cls>")
        if not 0 <= self.mlm_probability < 1:
            raise ValueError(f"mlm_probability={self.mlm_probability} must be in [0, 1)")
        self._generator = np.random.default_rng(self.seed)
        self._worker_id: int | None = None

    @classmethod
    def from_processor(cls, processor, **kwargs) -> ScGPTDataCollator:
        """Collator matching a processor's pad id/value, mask value, `max_length` and `seed`."""
        settings = {
            "pad_token_id": processor.pad_token_id,
            "pad_value": processor.pad_value,
            "mask_value": processor.mask_value,
            "max_length": processor.max_length,
            "seed": processor.seed,
        }
        return cls(**{**settings, **kwargs})

    def set_epoch(self, epoch: int) -> None:
        """The epoch that training draws depend on (with the seed and each row's dataset index)."""
        self.epoch = int(epoch)

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        generators = [self._generator_for(row) for row in features]
        cells = [
            self._fit_length(
                np.asarray(row["input_ids"]), np.asarray(row["values"], dtype=np.float32), generator
            )
            for row, generator in zip(features, generators, strict=True)
        ]
        width = max(len(input_ids) for input_ids, _ in cells)
        input_ids = np.full((len(cells), width), self.pad_token_id, dtype=np.int64)
        values = np.full((len(cells), width), self.pad_value, dtype=np.float32)
        attention_mask = np.zeros((len(cells), width), dtype=np.int64)
        for index, (cell_ids, cell_values) in enumerate(cells):
            input_ids[index, : len(cell_ids)] = cell_ids
            values[index, : len(cell_values)] = cell_values
            attention_mask[index, : len(cell_ids)] = 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
        if self.mlm_probability > 0:
            batch["labels"] = torch.from_numpy(values.copy())
            values = self._mask(values, attention_mask, generators)
        elif (labels := _class_labels(features)) is not None:
            batch["labels"] = labels
        batch["values"] = torch.from_numpy(values)
        if "batch_labels" in features[0]:
            batch["batch_labels"] = torch.tensor([row["batch_labels"] for row in features], dtype=torch.long)
        return batch

    def _generator_for(self, row: dict) -> np.random.Generator:
        if not self.training:
            input_ids = np.asarray(row["input_ids"], dtype=np.int64)
            return np.random.default_rng([self.seed, zlib.crc32(input_ids.tobytes())])
        if row.get(self.index_column) is not None:
            return np.random.default_rng([self.seed, self.epoch, int(row[self.index_column])])
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else None
        if worker_id != self._worker_id:
            # DataLoader workers hold copies of this collator: give each its own stream.
            entropy = [self.seed] if worker_id is None else [self.seed, worker_id + 1]
            self._generator = np.random.default_rng(entropy)
            self._worker_id = worker_id
        return self._generator

    def _fit_length(
        self, input_ids: np.ndarray, values: np.ndarray, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(input_ids) <= self.max_length:
            return input_ids, values
        genes = np.sort(generator.choice(len(input_ids) - 1, self.max_length - 1, replace=False)) + 1
        keep = np.concatenate(([0], genes))
        return input_ids[keep], values[keep]

    def _mask(
        self, values: np.ndarray, attention_mask: np.ndarray, generators: list[np.random.Generator]
    ) -> np.ndarray:
        masked = values.copy()
        for index, generator in enumerate(generators):
            n_genes = int(attention_mask[index].sum()) - 1
            n_masked = int(n_genes * self.mlm_probability)
            positions = generator.choice(n_genes, n_masked, replace=False) + 1
            masked[index, positions] = self.mask_value
        return masked


@dataclass
class GeneformerDataCollator(_CollatorMode):
    """Pad rank-value encoded cells into BERT batches: `input_ids`, `attention_mask` and `labels` (if present).

    Sequences are already cut to the model's input size by the processor; `max_length` only guards that.
    Nothing is random, so `training` (kept for the same interface as the scGPT collator) changes nothing.
    """

    pad_token_id: int
    max_length: int = 4096
    training: bool = True

    @classmethod
    def from_processor(cls, processor, **kwargs) -> GeneformerDataCollator:
        settings = {"pad_token_id": processor.pad_token_id, "max_length": processor.max_length}
        return cls(**{**settings, **kwargs})

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        cells = [np.asarray(row["input_ids"], dtype=np.int64) for row in features]
        lengths = np.array([len(cell) for cell in cells])
        if lengths.max(initial=0) > self.max_length:
            raise InvalidInputError(
                f"a cell has {lengths.max()} tokens but max_length is {self.max_length}; tokenize with the "
                f"processor of this model"
            )
        width = max(int(lengths.max(initial=0)), 1)
        real = np.arange(width) < lengths[:, None]
        input_ids = np.full((len(cells), width), self.pad_token_id, dtype=np.int64)
        input_ids[real] = np.concatenate(cells) if cells else []
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
        }
        if (labels := _class_labels(features)) is not None:
            batch["labels"] = labels
        return batch


class CollatorEpochCallback(TrainerCallback):
    """Tell a collator (any object with `set_epoch`) the epoch `Trainer` is starting, resumed runs included.

    DataLoader workers receive a copy of the collator when an epoch's iterator starts, after this callback ran;
    persistent workers would keep the first epoch's copy, so they are refused.
    """

    def __init__(self, collator):
        self.collator = collator

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            raise InvalidInputError(
                "dataloader_persistent_workers=True keeps the collator of the first epoch in each worker, so "
                "later epochs would repeat its gene draws; set dataloader_persistent_workers=False"
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.collator, "set_epoch"):
            self.collator.set_epoch(math.floor(state.epoch or 0))
