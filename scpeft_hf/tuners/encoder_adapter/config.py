"""Configuration of scPEFT's encoder adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..bottleneck import BottleneckAdapterConfig
from ..registration import ScPeftType


@dataclass
class EncoderAdapterConfig(BottleneckAdapterConfig):
    """Serial bottleneck adapter `h + up(act(down(h)))` on the output of each targeted layer's attention block.

    On scGPT (post-norm) and BERT/Geneformer the default target is `attention.output`, so the adapter sees
    `norm1(x + SA(x))` exactly where scPEFT puts it, before the feed-forward block. Defaults: bottleneck 0.25 of
    the hidden size, GELU, the first half of the layers, zero-initialised up projection (identity at step 0),
    and the model's task head trained and saved. `scpeft_hf.tuners.paper_config("encoder_adapter")` gives the
    official package's settings.

    On any other model, name the modules whose output should be adapted in `target_modules`.
    """

    _bias_only: ClassVar[str] = "encoder_adapter_only"

    layers_to_transform: list[int] | int | str | None = field(
        default=None,
        metadata={
            "help": (
                "Indices of the layers to adapt (the first number in a module's name). None takes the first "
                "half of the layers (scPEFT's layers 1..n/2) when the model's config has num_hidden_layers, "
                "and every matched module otherwise; 'all' takes every layer. Resolved to explicit indices when "
                "the adapter is attached, so adapter_config.json records them."
            )
        },
    )
    bottleneck_ratio: float = field(
        default=0.25,
        metadata={
            "help": "Bottleneck width as a fraction of the hidden size (scPEFT: 0.25, i.e. 512 -> 128 -> 512)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = ScPeftType.ENCODER_ADAPTER
