"""Geneformer on transformers' own BERT: size presets, checkpoint loading, and cell-level heads.

Geneformer checkpoints are plain `BertForMaskedLM` folders (`model_type` "bert"), so nothing is registered
with the Auto classes: the classes here subclass `BertPreTrainedModel` and load those folders directly.
"""

from .configuration_geneformer import GENEFORMER_PRESETS, geneformer_config
from .modeling_geneformer import (
    GeneformerForCellClassification,
    GeneformerModel,
    GeneformerOutput,
    check_vocab_size,
    load_geneformer,
    pool_cell_embedding,
)

__all__ = [
    "GENEFORMER_PRESETS",
    "GeneformerForCellClassification",
    "GeneformerModel",
    "GeneformerOutput",
    "check_vocab_size",
    "geneformer_config",
    "load_geneformer",
    "pool_cell_embedding",
]
