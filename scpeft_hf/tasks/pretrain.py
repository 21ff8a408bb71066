"""Masked-expression pretraining (scGPT's GEP + GEPC objectives) of the small embedded demo backbone.

The demo backbone is pretrained only on bundled data: scanpy's pbmc68k_reduced cells outside the demo's fixed
test split, so the demo's test cells are never seen before fine-tuning.
"""

from __future__ import annotations

import json
import logging
import shutil
import string
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from ..data import GeneVocab, ScGPTProcessor
from ..datasets import pbmc68k_reduced
from ..models.scgpt import ScGPTConfig, ScGPTForMaskedExpressionModeling
from ..output_folders import check_out_dir, make_staging_dir, publish
from .backbones import make_collator
from .card import TEMPLATES
from .splits import make_splits

logger = logging.getLogger(__name__)

DEMO_LABEL_KEY = "bulk_labels"
DEMO_SPLIT_KEY = "demo_split"
DEMO_SPLIT_SEED = 0  # fixed: the embedded backbone was pretrained without this split's test cells
PRETRAINING_CELLS = "pretraining_cells.txt"
DEMO_ARCHITECTURE = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.0,  # attention dropout forces the slow math path on CPU
    max_seq_len=512,
)


def demo_data() -> ad.AnnData:
    """pbmc68k_reduced with exact counts and `obs["demo_split"]`: the fixed stratified 72/8/20 split."""
    adata = pbmc68k_reduced()
    splits = make_splits(adata.obs[DEMO_LABEL_KEY], seed=DEMO_SPLIT_SEED)
    column = np.empty(adata.n_obs, dtype=object)
    for name, index in splits.items():
        column[index] = name
    adata.obs[DEMO_SPLIT_KEY] = column
    return adata


def pretrain_demo_backbone(
    out_dir: str | Path,
    epochs: int = 100,
    seed: int = 0,
    mask_probability: float = 0.4,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    max_grad_norm: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Pretrain the demo backbone and write it as a model folder (config, weights, vocab, processor, card)."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    adata = demo_data()
    cells = adata[adata.obs[DEMO_SPLIT_KEY] != "test"].copy()
    genes = sorted(map(str, adata.var_names))
    vocab = GeneVocab(
        {
            **{gene: i for i, gene in enumerate(genes)},
            "<pad>": len(genes),
            "<cls>": len(genes) + 1,
            "<eoc>": len(genes) + 2,
        }
    )
    config = ScGPTConfig(
        vocab_size=len(vocab),
        pad_token_id=vocab.pad_token_id,
        cls_token_id=vocab.cls_token_id,
        **DEMO_ARCHITECTURE,
        architectures=["ScGPTForMaskedExpressionModeling"],
    )
    processor = ScGPTProcessor(vocab, input_kind="auto", max_length=config.max_seq_len, seed=seed)
    dataset = processor(cells)
    torch.manual_seed(seed)
    model = ScGPTForMaskedExpressionModeling(config)

    staging = make_staging_dir(out_dir)
    try:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(staging / "checkpoints"),
                num_train_epochs=epochs,
                per_device_train_batch_size=batch_size,
                learning_rate=learning_rate,
                lr_scheduler_type="cosine",
                warmup_steps=0.05,
                weight_decay=0.01,
                max_grad_norm=max_grad_norm,
                logging_steps=20,
                save_strategy="no",
                report_to="none",
                seed=seed,
                remove_unused_columns=False,
                use_cpu=not torch.cuda.is_available(),
            ),
            train_dataset=dataset,
            data_collator=make_collator(processor, train=True, mlm_probability=mask_probability),
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / PRETRAINING_CELLS).write_text("\n".join(cells.obs_names) + "\n")
        card = string.Template((TEMPLATES / "demo_backbone.md").read_text()).substitute(
            n_cells=cells.n_obs,
            n_genes=len(genes),
            parameters=f"{model.num_parameters():,}",
            epochs=epochs,
            mask_probability=mask_probability,
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed,
            final_loss=f"{result.training_loss:.4f}",
            seconds=f"{seconds:.0f}",
            device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
            architecture=json.dumps(DEMO_ARCHITECTURE),
        )
        (staging / "README.md").write_text(card)
        publish(staging, out_dir, command="pretrain")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Pretrained the demo backbone in %.0f s (mean loss %.4f)", seconds, result.training_loss)
    return out_dir
