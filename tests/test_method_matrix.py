"""Every backbone x method x pooling, end to end on tiny models: train -> save -> load -> predict -> embed.

Backbones: the embedded scGPT demo backbone (pooling cls, avg-pool, w-pool) and tiny random Geneformers in the
V1 layout (no special tokens) and the V2 layout (`<cls>` ... `<eos>`), pooling cls and mean. Cells are real
PBMCs (pbmc68k_reduced, three cell types, 8 cells each), one epoch of `transformers.Trainer` with the task
layer's collators, so each case is a real training run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.tasks.backbones import (
    DEMO_BACKBONE,
    load_backbone,
    load_classifier,
    load_processor,
    make_collator,
)
from scpeft_hf.tasks.inference import run_model
from scpeft_hf.tasks.methods import METHODS, PEFT_METHODS, head_overrides, load_peft_adapter, prepare_model
from tests.geneformer_helpers import ensembl_id, write_tiny_geneformer

LABEL_KEY = "bulk_labels"
CELL_TYPES = ("CD14+ Monocyte", "CD56+ NK", "CD19+ B")
CELLS_PER_TYPE = 8
POOLINGS = {
    "scgpt": ("cls", "avg-pool", "w-pool"),
    "geneformer-v1": ("cls", "mean"),
    "geneformer-v2": ("cls", "mean"),
}
CASES = [(backbone, method, pooling) for backbone, poolings in POOLINGS.items() for pooling in poolings
         for method in METHODS]  # fmt: skip


@pytest.fixture(scope="module")
def cells():
    adata = pbmc68k_reduced()
    keep = np.concatenate(
        [np.flatnonzero(adata.obs[LABEL_KEY] == name)[:CELLS_PER_TYPE] for name in CELL_TYPES]
    )
    return adata[keep].copy()


@pytest.fixture(scope="module")
def bases(tmp_path_factory, cells):
    folder = tmp_path_factory.mktemp("matrix")
    mapping = {symbol: ensembl_id(i + 1) for i, symbol in enumerate(cells.var_names)}
    folders = {"scgpt": DEMO_BACKBONE}
    for name, v2 in (("geneformer-v1", False), ("geneformer-v2", True)):
        base = write_tiny_geneformer(folder / name, cells.n_vars, v2=v2, max_positions=64)
        (base / "gene_name_id_dict_gc104M.json").write_text(json.dumps(mapping))
        folders[name] = base
    return folders


def classifier(base_dir, processor, pooling: str, method: str):
    torch.manual_seed(0)
    return load_classifier(
        base_dir,
        processor,
        num_labels=len(CELL_TYPES),
        cell_emb_style=pooling,
        **head_overrides(method, base_dir),
    )


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "method", "pooling"), CASES)
def test_train_save_load_predict_embed(bases, cells, tmp_path, backbone, method, pooling):
    base_dir = bases[backbone]
    processor = load_processor(base_dir, max_length=48)
    processor.label_names = sorted(CELL_TYPES)
    dataset = processor(cells, label_key=LABEL_KEY)
    untrained = run_model(
        classifier(base_dir, processor, pooling, method), dataset, make_collator(processor, False)
    )

    model, learning_rate = prepare_model(classifier(base_dir, processor, pooling, method), method)
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "checkpoints"), num_train_epochs=1, per_device_train_batch_size=8,
        learning_rate=learning_rate, save_strategy="no", report_to="none", seed=0, use_cpu=True,
        remove_unused_columns=False, label_names=["labels"], disable_tqdm=True,
    )  # fmt: skip
    collator = make_collator(processor, train=True)
    Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=collator).train()
    trained = run_model(model, dataset, make_collator(processor, False))

    model.save_pretrained(tmp_path / "saved")
    if method in PEFT_METHODS:
        loaded = load_peft_adapter(classifier(base_dir, processor, pooling, method), tmp_path / "saved")
    else:  # the whole model, its pooling recorded in its config
        loaded = load_classifier(tmp_path / "saved", processor)
    predicted = run_model(loaded, dataset, make_collator(processor, False))

    n_cells, hidden = cells.n_obs, loaded.config.hidden_size
    assert predicted.logits.shape == (n_cells, len(CELL_TYPES))
    assert predicted.cell_embeddings.shape == (n_cells, hidden)
    assert np.isfinite(predicted.logits).all() and np.isfinite(predicted.cell_embeddings).all()
    np.testing.assert_allclose(predicted.logits, trained.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predicted.cell_embeddings, trained.cell_embeddings, rtol=1e-5, atol=1e-5)
    assert not np.allclose(predicted.logits, untrained.logits)  # the head (or what feeds it) was trained

    # embed: the base backbone's own embedding with the same pooling. The probe leaves the backbone alone, every
    # other method changes what the pooled layer sees.
    backbone_model = load_backbone(base_dir, processor)
    backbone_model.config.cell_emb_style = pooling
    embedded = run_model(backbone_model, dataset, make_collator(processor, False))
    assert embedded.logits is None and embedded.cell_embeddings.shape == (n_cells, hidden)
    np.testing.assert_allclose(embedded.cell_embeddings, untrained.cell_embeddings, rtol=1e-5, atol=1e-5)
    if method == "probe":
        np.testing.assert_allclose(predicted.cell_embeddings, embedded.cell_embeddings, rtol=1e-5, atol=1e-5)
    else:
        assert not np.allclose(predicted.cell_embeddings, embedded.cell_embeddings, atol=1e-6)
