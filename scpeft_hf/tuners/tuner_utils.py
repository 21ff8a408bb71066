"""Small pieces shared by the scPEFT tuner layers."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class WrapsBlockMixin(BaseTunerLayer):
    """For tuner layers that may wrap a whole block (e.g. BERT's `BertSelfOutput`, an encoder stack).

    peft moves adapter weights to the device and dtype of the wrapped module's `weight`; a block has none, so
    its first floating-point parameter decides instead.
    """

    def _get_base_layer_device_and_dtype(
        self, base_layer: nn.Module
    ) -> tuple[torch.device | None, torch.dtype | None]:
        device, dtype = super()._get_base_layer_device_and_dtype(base_layer)
        if device is None:
            parameter = next((p for p in base_layer.parameters() if p.is_floating_point()), None)
            if parameter is not None:
                device, dtype = parameter.device, parameter.dtype
        return device, dtype
