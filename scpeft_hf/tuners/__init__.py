"""scPEFT's adapter variants as peft methods: encoder, token and prefix adapters, plus LoRA presets.

Importing this package registers the methods with peft (`get_peft_model`, `PeftModel.from_pretrained`,
`PeftConfig.from_pretrained`, `inject_adapter_in_model`). Tuners read a model's config, never its classes.
"""

from .bottleneck import BottleneckAdapterConfig, BottleneckAdapterLayer, BottleneckAdapterModel
from .encoder_adapter import EncoderAdapterConfig, EncoderAdapterLayer, EncoderAdapterModel
from .prefix_adapter import PrefixAdapterConfig, PrefixAdapterLayer, PrefixAdapterModel
from .presets import PAPER_METHODS, paper_config, scpeft_lora_config
from .registration import ScPeftType, register_scpeft_method
from .token_adapter import TokenAdapterConfig, TokenAdapterLayer, TokenAdapterModel

__all__ = [
    "PAPER_METHODS",
    "BottleneckAdapterConfig",
    "BottleneckAdapterLayer",
    "BottleneckAdapterModel",
    "EncoderAdapterConfig",
    "EncoderAdapterLayer",
    "EncoderAdapterModel",
    "PrefixAdapterConfig",
    "PrefixAdapterLayer",
    "PrefixAdapterModel",
    "ScPeftType",
    "TokenAdapterConfig",
    "TokenAdapterLayer",
    "TokenAdapterModel",
    "paper_config",
    "register_scpeft_method",
    "scpeft_lora_config",
]
