"""Tiny scGPT models, cell batches and per-method configs shared by the tuner tests."""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.config import PeftConfig

from scpeft_hf import (
    EncoderAdapterConfig,
    PrefixAdapterConfig,
    ScGPTConfig,
    ScGPTForCellClassification,
    TokenAdapterConfig,
    scpeft_lora_config,
)

HIDDEN = 32
NUM_LAYERS = 4
NUM_LABELS = 3
NUM_CLS_LAYERS = 3
PAD_ID, CLS_ID = 0, 1


def tiny_config(**overrides) -> ScGPTConfig:
    """A 4-layer scGPT with dropout 0, so train and eval forwards compute the same thing."""
    settings = dict(
        vocab_size=40,
        hidden_size=HIDDEN,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD_ID,
        cls_token_id=CLS_ID,
        num_labels=NUM_LABELS,
        num_cls_layers=NUM_CLS_LAYERS,
    )
    settings.update(overrides)
    return ScGPTConfig(**settings)


def tiny_scgpt(seed: int = 0, **overrides) -> ScGPTForCellClassification:
    """Same seed, same weights: a "fresh base model" for round trips."""
    torch.manual_seed(seed)
    return ScGPTForCellClassification(tiny_config(**overrides)).eval()


def cell_batch(
    seed: int = 1, batch: int = 3, length: int = 10, pad_from: dict[int, int] | None = None
) -> dict:
    """`<cls>` + random genes with binned values; `pad_from={row: start}` pads a row from `start` on."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 40, (batch, length), generator=generator)
    input_ids[:, 0] = CLS_ID
    values = torch.randint(1, 51, (batch, length), generator=generator).float()
    values[:, 0] = 0
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row, start in (pad_from if pad_from is not None else {1: 7}).items():
        input_ids[row, start:] = PAD_ID
        values[row, start:] = -2
        attention_mask[row, start:] = 0
    return {"input_ids": input_ids, "values": values, "attention_mask": attention_mask}


METHODS = ("encoder", "token", "prefix", "lora")


def method_config(method: str, identity: bool = True, **overrides) -> PeftConfig:
    """Config of `method` with our defaults; `identity=False` gives a non-identity (randomly initialised) adapter."""
    if method == "encoder":
        return EncoderAdapterConfig(**({} if identity else {"init_weights": False}), **overrides)
    if method == "token":
        return TokenAdapterConfig(**({} if identity else {"init_weights": False}), **overrides)
    if method == "prefix":
        return PrefixAdapterConfig(**({} if identity else {"init_weights": False}), **overrides)
    if method == "lora":
        return scpeft_lora_config(
            num_layers=NUM_LAYERS, **({} if identity else {"init_lora_weights": False}), **overrides
        )
    raise ValueError(method)


def adapter_parameter_count(method: str, hidden: int, num_layers: int) -> int:
    """Adapter parameters of each method's default config, computed by hand."""
    adapted_layers = num_layers // 2
    if method == "encoder":
        bottleneck = hidden // 4
        return adapted_layers * (hidden * bottleneck + bottleneck + bottleneck * hidden + hidden)
    if method == "token":
        return 2 * (hidden * hidden + hidden)
    if method == "prefix":
        return adapted_layers * 8 * hidden
    if method == "lora":
        return adapted_layers * 2 * (hidden * 8 + 8 * hidden)  # query and value, rank 8
    raise ValueError(method)


def head_parameter_count(hidden: int, num_labels: int, num_cls_layers: int = NUM_CLS_LAYERS) -> int:
    """`classifier`: (n-1) x [Linear(d, d), LayerNorm(d)], then Linear(d, num_labels)."""
    return (num_cls_layers - 1) * (hidden * hidden + hidden + 2 * hidden) + hidden * num_labels + num_labels


def is_lora(config: PeftConfig) -> bool:
    return isinstance(config, LoraConfig)
