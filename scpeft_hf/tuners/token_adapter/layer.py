"""The token adapter layer: a [`BottleneckAdapterLayer`] with the token adapter's parameter names."""

from __future__ import annotations

from ..bottleneck import BottleneckAdapterLayer
from ..registration import ScPeftType

_PREFIX = ScPeftType.TOKEN_ADAPTER.prefix


class TokenAdapterLayer(BottleneckAdapterLayer):
    """Wraps an embedding module (or its LayerNorm) and adds the token adapter's update to its output."""

    adapter_layer_names = (_PREFIX + "down", _PREFIX + "up")
    other_param_names = (_PREFIX + "act",)
