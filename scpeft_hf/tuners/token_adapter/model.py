"""The token adapter tuner: finds the embedding module and wraps it."""

from __future__ import annotations

from ..bottleneck import BottleneckAdapterModel
from ..registration import ScPeftType
from ..targets import TOKEN_ADAPTER_TARGET_MODULES
from .layer import TokenAdapterLayer


class TokenAdapterModel(BottleneckAdapterModel):
    """Adds scPEFT's token adapter to a model; see [`TokenAdapterConfig`]."""

    prefix = ScPeftType.TOKEN_ADAPTER.prefix
    tuner_layer_cls = TokenAdapterLayer
    target_module_mapping = TOKEN_ADAPTER_TARGET_MODULES
    method_name = "token adapter"
    # the embedding sits outside the layer stack, so there are no layers to select by default
    default_first_half_layers = False
