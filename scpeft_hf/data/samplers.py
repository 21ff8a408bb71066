"""`BatchGroupedSampler`: mini-batches drawn from one batch (donor, sequencing run) at a time.

Domain-specific batch norm learns one set of statistics per batch, so scGPT's integration recipe feeds it
mini-batches that each hold cells of a single batch. Give it to a DataLoader as `batch_sampler`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class BatchGroupedSampler:
    """Yields lists of row indices; every list holds cells of one batch only.

    Each epoch the cells of every batch are shuffled and cut into mini-batches of `batch_size` (the last one of a
    batch may be smaller, or dropped with `drop_last`), and the mini-batches of all batches are shuffled together.
    The order depends only on `seed` and the epoch (`set_epoch`, or one more per completed pass).
    """

    def __init__(
        self,
        batch_labels: Sequence[int] | np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_labels = np.asarray(batch_labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, rng: np.random.Generator | None) -> list[np.ndarray]:
        chunks = []
        for label in np.unique(self.batch_labels):
            rows = np.flatnonzero(self.batch_labels == label)
            if rng is not None:
                rows = rng.permutation(rows)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    chunks.append(chunk)
        return chunks

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        chunks = self._chunks(rng)
        order = rng.permutation(len(chunks)) if rng is not None else range(len(chunks))
        for index in order:
            yield chunks[index].tolist()
        self.epoch += 1

    def __len__(self) -> int:
        return len(self._chunks(None))
