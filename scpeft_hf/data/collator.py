"""`ScGPTDataCollator`: pads tokenized cells into model batches for `transformers.Trainer`.

Over-long cells (more than `max_length` tokens, `<cls>` included) are cut to `<cls>` plus `max_length - 1`
genes drawn without replacement, kept in their original order. In training mode the draw comes from one
seeded generator that advances with every batch, so each epoch sees other genes; in eval mode every cell
gets its own generator seeded by (`seed`, CRC32 of its gene ids), so a cell always gets the same genes,
whatever batch or order it comes in. Masking for masked-expression pretraining follows the same rule.

`transformers.Trainer` collates training and evaluation batches with the same collator: give it one in
training mode, and for reproducible evaluation switch it around `evaluate()`/`predict()`
(`trainer.data_collator = collator.eval()`, then `.train()` again), or override `get_eval_dataloader`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ScGPTDataCollator:
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

    def train(self, mode: bool = True) -> ScGPTDataCollator:
        self.training = mode
        return self

    def eval(self) -> ScGPTDataCollator:
        return self.train(False)

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        generators = [self._generator_for(np.asarray(row["input_ids"])) for row in features]
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
        elif "labels" in features[0] and features[0]["labels"] is not None:
            batch["labels"] = torch.tensor([row["labels"] for row in features], dtype=torch.long)
        batch["values"] = torch.from_numpy(values)
        if "batch_labels" in features[0]:
            batch["batch_labels"] = torch.tensor([row["batch_labels"] for row in features], dtype=torch.long)
        return batch

    def _generator_for(self, input_ids: np.ndarray) -> np.random.Generator:
        if not self.training:
            return np.random.default_rng([self.seed, zlib.crc32(input_ids.astype(np.int64).tobytes())])
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
