"""Geneformer on transformers' own BERT: `GeneformerConfig`, cell-level models, presets and checkpoint loading.

Why a config of its own: official Geneformer folders say `model_type: "bert"`, and registering anything for
`BertConfig` would hand every BERT checkpoint on the Hub to our classes. `GeneformerConfig` subclasses
`BertConfig` under `model_type` "geneformer" (adding `cell_emb_style`, `cell_emb_layer`, `class_weights`) and is
registered with `AutoConfig`, `AutoModel` (`GeneformerModel`), `AutoModelForSequenceClassification`
(`GeneformerForCellClassification`) and `AutoModelForMaskedLM` (`GeneformerForMaskedLM`). So folders we write load
with `AutoModelForSequenceClassification.from_pretrained(folder, num_labels=...)`, and peft's
`task_type="SEQ_CLS"` trains and saves their `classifier`; BERT folders still resolve to transformers' BERT.

Official folders (ctheodoris/Geneformer layout) load through `load_geneformer`, which converts their config on
load; re-save one as a "geneformer" folder (pretraining head included) with
`load_geneformer(official, "masked_lm").save_pretrained(out)` (add `cell_emb_style="mean"` for V1).
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from .configuration_geneformer import (
    GENEFORMER_FIELDS,
    GENEFORMER_PRESETS,
    GeneformerConfig,
    geneformer_config,
    geneformer_config_from_bert,
    read_geneformer_config,
)
from .modeling_geneformer import (
    GeneformerForCellClassification,
    GeneformerForMaskedLM,
    GeneformerModel,
    GeneformerOutput,
    GeneformerPreTrainedModel,
    check_vocab_size,
    load_geneformer,
    pool_cell_embedding,
)

AutoConfig.register(GeneformerConfig.model_type, GeneformerConfig, exist_ok=True)
AutoModel.register(GeneformerConfig, GeneformerModel, exist_ok=True)
AutoModelForSequenceClassification.register(GeneformerConfig, GeneformerForCellClassification, exist_ok=True)
AutoModelForMaskedLM.register(GeneformerConfig, GeneformerForMaskedLM, exist_ok=True)

__all__ = [
    "GENEFORMER_FIELDS",
    "GENEFORMER_PRESETS",
    "GeneformerConfig",
    "GeneformerForCellClassification",
    "GeneformerForMaskedLM",
    "GeneformerModel",
    "GeneformerOutput",
    "GeneformerPreTrainedModel",
    "check_vocab_size",
    "geneformer_config",
    "geneformer_config_from_bert",
    "load_geneformer",
    "pool_cell_embedding",
    "read_geneformer_config",
]
