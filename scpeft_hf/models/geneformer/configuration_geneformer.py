"""Geneformer's published sizes as `BertConfig` presets (see the config.json files of ctheodoris/Geneformer).

All sizes share BERT's architecture with ReLU, `layer_norm_eps` 1e-12, absolute positions, two token types
and `<pad>` = id 0. V1 feeds up to 2,048 ranked genes without special tokens; V2 feeds `<cls>`, up to 4,094
genes and `<eos>` in 4,096 positions, which is where its default cell embedding (`<cls>`) comes from.
"""

from __future__ import annotations

from typing import Any

from transformers import BertConfig

_SHARED: dict[str, Any] = {
    "hidden_act": "relu",
    "layer_norm_eps": 1e-12,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    "initializer_range": 0.02,
    "hidden_dropout_prob": 0.02,
    "attention_probs_dropout_prob": 0.02,
    "position_embedding_type": "absolute",
}

GENEFORMER_PRESETS: dict[str, dict[str, Any]] = {
    "V1-10M": {
        "hidden_size": 256,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 2048,
        "vocab_size": 25_426,
        "cell_emb_style": "mean",
    },
    "V2-104M": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 4096,
        "vocab_size": 20_275,
        "cell_emb_style": "cls",
    },
    "V2-316M": {
        "hidden_size": 1152,
        "num_hidden_layers": 18,
        "num_attention_heads": 18,
        "intermediate_size": 4608,
        "max_position_embeddings": 4096,
        "vocab_size": 20_275,
        "cell_emb_style": "cls",
    },
}


def geneformer_config(preset: str, **overrides: Any) -> BertConfig:
    """A `BertConfig` of a published Geneformer size (`"V1-10M"`, `"V2-104M"`, `"V2-316M"`).

    `overrides` replace any field, e.g. `num_labels=10` or a smaller `vocab_size` for a custom dictionary.
    The extra field `cell_emb_style` ("cls" or "mean") tells the cell-level heads how to pool.
    """
    if preset not in GENEFORMER_PRESETS:
        raise ValueError(
            f"Unknown Geneformer preset {preset!r}; choose one of {', '.join(GENEFORMER_PRESETS)}"
        )
    return BertConfig(**{**_SHARED, **GENEFORMER_PRESETS[preset], **overrides})
