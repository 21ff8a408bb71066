"""The encoder adapter tuner: finds the attention blocks' output modules and wraps them."""

from __future__ import annotations

from ..bottleneck import BottleneckAdapterModel
from ..registration import ScPeftType
from ..targets import ENCODER_ADAPTER_TARGET_MODULES
from .layer import EncoderAdapterLayer


class EncoderAdapterModel(BottleneckAdapterModel):
    """Adds scPEFT's encoder adapter to a model; see [`EncoderAdapterConfig`].

    Example:
        ```py
        >>> import scpeft_hf
        >>> from peft import get_peft_model
        >>> model = get_peft_model(scgpt_model, scpeft_hf.EncoderAdapterConfig())
        ```
    """

    prefix = ScPeftType.ENCODER_ADAPTER.prefix
    tuner_layer_cls = EncoderAdapterLayer
    target_module_mapping = ENCODER_ADAPTER_TARGET_MODULES
    method_name = "encoder adapter"
    default_first_half_layers = True
