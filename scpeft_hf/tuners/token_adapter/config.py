"""Configuration of scPEFT's token adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..bottleneck import BottleneckAdapterConfig
from ..registration import ScPeftType


@dataclass
class TokenAdapterConfig(BottleneckAdapterConfig):
    """Serial bottleneck adapter `h + up(act(down(h)))` on the input token embeddings.

    On scGPT the default target is the expression-value embedding after its LayerNorm (`value_encoder.norm`,
    before dropout), where scPEFT puts it; on BERT/Geneformer, which have no value embedding, it is the input
    embedding LayerNorm. Defaults: bottleneck 1.0 of the hidden size (the official package), GELU,
    zero-initialised up projection (identity at step 0), and the model's task head trained and saved.

    Because the adapter sits at the input, training backpropagates through every encoder layer.
    """

    _bias_only: ClassVar[str] = "token_adapter_only"

    bottleneck_ratio: float = field(
        default=1.0,
        metadata={
            "help": "Bottleneck width as a fraction of the hidden size (official scPEFT package: 1.0; the "
            "paper's fork: 0.25)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = ScPeftType.TOKEN_ADAPTER
