"""Training machinery of `integrate`: mini-batches of one batch each, evaluation with fixed masks, and model
selection by the lowest validation loss (no labels needed)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from ..data import BatchGroupedSampler


class IntegrationTrainer(Trainer):
    """`Trainer` whose mini-batches each hold one batch's cells (DSBN learns per-batch statistics), and whose
    evaluation uses the collator in eval mode (fixed masks), so validation losses compare across epochs."""

    def __init__(self, *args, eval_data_collator, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def _grouped_loader(self, dataset, collator, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = BatchGroupedSampler(
            dataset["batch_labels"], batch_size, shuffle=shuffle, seed=self.args.seed
        )
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator)
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> DataLoader:
        return self._grouped_loader(self.train_dataset, self.data_collator, self._train_batch_size, True)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return self._grouped_loader(dataset, self.eval_data_collator, self.args.eval_batch_size, False)


class KeepLowestValidationLoss(TrainerCallback):
    """Model selection without labels: remembers the trained tensors (parameters and DSBN statistics) of the
    epoch with the lowest validation loss, and puts them back when training ends."""

    def __init__(self, model: torch.nn.Module):
        trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        buffers = {name for name, _ in model.named_buffers()}
        self.names = trainable | buffers
        self.best_loss, self.best_epoch, self.best_state = float("inf"), None, None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if metrics and metrics.get("eval_loss", float("inf")) < self.best_loss:
            self.best_loss, self.best_epoch = metrics["eval_loss"], state.epoch
            self.best_state = {
                name: tensor.detach().cpu().clone()
                for name, tensor in model.state_dict().items()
                if name in self.names
            }

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best_state is not None:
            model.load_state_dict(self.best_state, strict=False)


def validation_rows(batches: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A random `fraction` of every batch (at least one cell each) as validation rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(batches):
        members = rng.permutation(np.flatnonzero(batches == label))
        rows.append(members[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(rows))
