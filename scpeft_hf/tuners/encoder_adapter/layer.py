"""The encoder adapter layer: a [`BottleneckAdapterLayer`] with the encoder adapter's parameter names."""

from __future__ import annotations

from ..bottleneck import BottleneckAdapterLayer
from ..registration import ScPeftType

_PREFIX = ScPeftType.ENCODER_ADAPTER.prefix


class EncoderAdapterLayer(BottleneckAdapterLayer):
    """Wraps an attention block's output module and adds the encoder adapter's update to its output."""

    adapter_layer_names = (_PREFIX + "down", _PREFIX + "up")
    other_param_names = (_PREFIX + "act",)
