"""Small pieces shared by the scPEFT tuner layers."""

from __future__ import annotations

from typing import ClassVar

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
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


class BlockTuner(BaseTuner):
    """Base of the scPEFT tuners, whose layers may wrap blocks and can never be merged into weights."""

    # Human-readable method name for error messages.
    method_name: ClassVar[str]

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        if not hasattr(new_module, "base_layer"):
            # unloading: peft would copy `weight`/`bias` onto the unwrapped module, which a block does not have;
            # the unwrapped module already holds its own parameters
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _check_merge_allowed(self) -> None:
        raise ValueError(
            f"The {self.method_name} cannot be merged into the base weights (it is not a weight update); use the "
            "PeftModel unmerged, or unload() to get the base model back"
        )
