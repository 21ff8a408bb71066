"""scPEFT's token adapter as a peft method (registered on import)."""

from ..registration import ScPeftType, register_scpeft_method
from .config import TokenAdapterConfig
from .layer import TokenAdapterLayer
from .model import TokenAdapterModel

register_scpeft_method(ScPeftType.TOKEN_ADAPTER, TokenAdapterConfig, TokenAdapterModel)

__all__ = ["TokenAdapterConfig", "TokenAdapterLayer", "TokenAdapterModel"]
