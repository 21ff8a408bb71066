"""`train --resume`: a run interrupted after a checkpoint continues from it and ends with the metrics of an
uninterrupted run with the same seed; its checkpoints live in `.<out>.partial` until it succeeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.output_folders import partial_dir
from scpeft_hf.tasks.annotation import AnnotationTrainer, TrainingSettings, train_annotation

TYPES = ("CD14+ Monocyte", "CD19+ B", "CD56+ NK")


@pytest.fixture(scope="module")
def cells():
    adata = pbmc68k_reduced()
    keep = np.concatenate([np.flatnonzero(adata.obs["bulk_labels"] == name)[:20] for name in TYPES])
    return adata[keep].copy()


def settings() -> TrainingSettings:
    # max_length 32 < the cells' gene counts: the collator subsamples genes, the draws must continue on resume
    return TrainingSettings(epochs=3, batch_size=8, max_length=32, early_stopping_patience=5, seed=1)


def comparable(out) -> dict:
    """metrics.json without timings, and without `train_loss`: a resumed run averages its resumed steps only."""
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["baseline"].pop("train_seconds")
    return {k: v for k, v in metrics.items() if k not in ("train_seconds", "train_loss")}


@pytest.mark.slow
def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(cells, tmp_path, monkeypatch):
    train_annotation(cells, "bulk_labels", "encoder", tmp_path / "straight", settings=settings())
    assert not partial_dir(tmp_path / "straight").exists()

    save = AnnotationTrainer._save_checkpoint

    def save_then_interrupt(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt  # as if the run were stopped right after its first checkpoint

    out = tmp_path / "resumed"
    monkeypatch.setattr(AnnotationTrainer, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_annotation(cells, "bulk_labels", "encoder", out, settings=settings())
    monkeypatch.undo()
    assert not out.exists()
    assert [p.name for p in (partial_dir(out) / "checkpoints").iterdir()] == ["checkpoint-6"]

    steps = []
    step = AnnotationTrainer.training_step
    monkeypatch.setattr(
        AnnotationTrainer, "training_step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k)
    )
    train_annotation(cells, "bulk_labels", "encoder", out, settings=settings(), resume=True)
    assert len(steps) == 12  # epochs 2 and 3 only: the run went on from checkpoint-6
    assert not partial_dir(out).exists()
    assert comparable(out) == comparable(tmp_path / "straight")
    # the trained weights agree to float rounding (measured: at most 7.5e-9 apart, in the head)
    resumed, straight = (
        load_file(folder / "adapter_model.safetensors") for folder in (out, tmp_path / "straight")
    )
    assert resumed.keys() == straight.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)
