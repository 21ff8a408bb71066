"""scPEFT's encoder adapter as a peft method (registered on import)."""

from ..registration import ScPeftType, register_scpeft_method
from .config import EncoderAdapterConfig
from .layer import EncoderAdapterLayer
from .model import EncoderAdapterModel

register_scpeft_method(ScPeftType.ENCODER_ADAPTER, EncoderAdapterConfig, EncoderAdapterModel)

__all__ = ["EncoderAdapterConfig", "EncoderAdapterLayer", "EncoderAdapterModel"]
