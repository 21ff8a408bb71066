"""The prefix adapter tuner: wraps the encoder stack in a [`PrefixAdapterLayer`]."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from peft.config import PeftConfig
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from ..registration import ScPeftType
from ..targets import (
    PREFIX_ADAPTER_TARGET_MODULES,
    check_model_hidden_size,
    default_target_modules,
    resolve_layers,
    resolve_modules_to_save,
)
from ..tuner_utils import BlockTuner
from .config import PrefixAdapterConfig
from .layer import PrefixAdapterLayer, find_layer_list


class PrefixAdapterModel(BlockTuner):
    """Adds scPEFT's prefix adapter to a model; see [`PrefixAdapterConfig`]."""

    prefix = ScPeftType.PREFIX_ADAPTER.prefix
    tuner_layer_cls = PrefixAdapterLayer
    target_module_mapping = PREFIX_ADAPTER_TARGET_MODULES
    method_name = "prefix adapter"

    @staticmethod
    def _check_target_module_exists(peft_config: PrefixAdapterConfig, key: str) -> bool:
        # layers_to_transform selects layers *inside* the wrapped stack, so it must not filter the stack itself
        stack_only = SimpleNamespace(
            target_modules=peft_config.target_modules,
            exclude_modules=peft_config.exclude_modules,
            modules_to_save=peft_config.modules_to_save,
            target_parameters=None,
        )
        return check_target_module_exists(stack_only, key)

    def _prepare_adapter_config(self, peft_config: PrefixAdapterConfig, model_config: dict) -> PeftConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(
                self.target_module_mapping, model_config, "prefix adapter"
            )
        peft_config.model_hidden_size = check_model_hidden_size(
            peft_config.model_hidden_size, model_config, "prefix adapter"
        )
        peft_config.modules_to_save = resolve_modules_to_save(
            peft_config.modules_to_save, self.model, model_config
        )
        return peft_config

    def _create_and_replace(
        self,
        peft_config: PrefixAdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        stack = target.get_base_layer() if isinstance(target, PrefixAdapterLayer) else target
        _, layers = find_layer_list(stack, peft_config.layers_pattern)
        # resolved against the real stack, and written back so adapter_config.json records the layers
        peft_config.layers_to_transform = resolve_layers(
            peft_config.layers_to_transform, len(layers), default_first_half=True
        )
        if isinstance(target, PrefixAdapterLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if peft_config.model_hidden_size is None:
            raise ValueError(
                "The prefix adapter needs the width of its tokens, but the model's config has no hidden_size; "
                "set PrefixAdapterConfig(model_hidden_size=...)"
            )
        new_module = PrefixAdapterLayer(
            target, adapter_name, peft_config, hidden_size=peft_config.model_hidden_size
        )
        new_module.watch_model_outputs(self.model)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
