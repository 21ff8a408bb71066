"""scPEFT's prefix adapter as a peft method (registered on import)."""

from ..registration import ScPeftType, register_scpeft_method
from .config import PrefixAdapterConfig
from .layer import PrefixAdapterLayer
from .model import PrefixAdapterModel

register_scpeft_method(ScPeftType.PREFIX_ADAPTER, PrefixAdapterConfig, PrefixAdapterModel)

__all__ = ["PrefixAdapterConfig", "PrefixAdapterLayer", "PrefixAdapterModel"]
