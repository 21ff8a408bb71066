"""Ready-made configs: scPEFT's LoRA setting and the official package's defaults (`paper_config`).

The config classes' own defaults are ours; they differ from the official package only where the package has a
known weakness: bottleneck adapters start as an identity (zero up projection) instead of PyTorch's default init,
and LoRA leaves the base biases frozen so that `disable_adapter()` gives back the base model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peft import LoraConfig
from peft.config import PeftConfig

from .encoder_adapter import EncoderAdapterConfig
from .prefix_adapter import PrefixAdapterConfig
from .targets import first_half_of_layers
from .token_adapter import TokenAdapterConfig

PAPER_METHODS = ("encoder_adapter", "token_adapter", "prefix_adapter", "lora")


def scpeft_lora_config(
    r: int = 8,
    lora_alpha: float = 1,
    layers: Sequence[int] | str | None = None,
    num_layers: int | None = None,
    *,
    target_modules: Sequence[str] = ("query", "value"),
    modules_to_save: Sequence[str] | None = ("classifier",),
    **kwargs: Any,
) -> LoraConfig:
    """peft's own `LoraConfig` with scPEFT's LoRA setting: rank 8, alpha 1, on the query and value projections
    of the first half of the layers, with the annotation head (`classifier`) trained and saved.

    Args:
        r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by `lora_alpha / r`).
        layers: layer indices to adapt, or "all"; None takes the first half of `num_layers` layers.
        num_layers: the model's layer count (`model.config.num_hidden_layers`). LoraConfig cannot read the model,
            so the first half has to be computed here.
        target_modules: projections to adapt (scGPT and BERT name them `query`, `key`, `value`).
        modules_to_save: task head(s) to train and save (`classifier` is the head of scGPT and Geneformer;
            peft's SEQ_CLS task type adds `classifier`/`score` too).
        kwargs: any other `LoraConfig` field, e.g. `lora_dropout` or `bias`.
    """
    if layers == "all":
        if num_layers is None:
            raise ValueError("layers='all' needs num_layers=model.config.num_hidden_layers")
        layers = list(range(num_layers))
    elif layers is None:
        if num_layers is None:
            raise ValueError(
                "scpeft_lora_config needs the layer count for its default (the first half of the layers): pass "
                "num_layers=model.config.num_hidden_layers, or layers=[...] explicitly"
            )
        layers = first_half_of_layers(num_layers)
    else:
        layers = list(layers)
        if num_layers is not None and any(not 0 <= index < num_layers for index in layers):
            raise ValueError(
                f"layers={layers} has indices outside the model's {num_layers} layers; use 0..{num_layers - 1}"
            )
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules),
        layers_to_transform=layers,
        modules_to_save=list(modules_to_save) if modules_to_save is not None else None,
        **kwargs,
    )


def paper_config(method: str, num_layers: int | None = None, **overrides: Any) -> PeftConfig:
    """The official scPEFT package's settings for `method` (DESIGN.md §4), with optional field overrides.

    - "encoder_adapter": bottleneck 0.25, GELU, first half of the layers, PyTorch default init.
    - "token_adapter": bottleneck 1.0, GELU, PyTorch default init.
    - "prefix_adapter": 8 zero-initialised tokens on the first half of the layers.
    - "lora": rank 8, alpha 1 on query/value of the first half of the layers, biases of the adapted projections
      trained (`bias="lora_only"`). The official code trains the fused QKV bias; the key bias gets no gradient
      in softmax attention, so training the query and value biases is the same. Needs `num_layers`.

    The paper's fork differs in places (64 prefix tokens on all layers, token bottleneck 0.25, an extra parallel
    adapter on the feed-forward block); pass overrides such as `num_tokens=64, layers_to_transform="all"`.
    """
    if method == "encoder_adapter":
        return EncoderAdapterConfig(**{"init_weights": "paper", "bottleneck_ratio": 0.25, **overrides})
    if method == "token_adapter":
        return TokenAdapterConfig(**{"init_weights": "paper", "bottleneck_ratio": 1.0, **overrides})
    if method == "prefix_adapter":
        return PrefixAdapterConfig(**{"num_tokens": 8, "init_weights": True, **overrides})
    if method == "lora":
        return scpeft_lora_config(
            **{"r": 8, "lora_alpha": 1, "num_layers": num_layers, "bias": "lora_only", **overrides}
        )
    raise ValueError(f"Unknown scPEFT method {method!r}; choose one of {PAPER_METHODS}")
