"""The prefix adapter layer: wraps an encoder stack and manages the prefix slots around its layers.

Forward pre-hooks on the stack's layers insert the tokens (first targeted layer), overwrite them (later
targeted layers) and widen the attention mask (every layer from the first targeted one on); the wrapper strips
the slots from the stack's outputs, and forward hooks on the backbone and the model from the hidden states and
attention maps they return (the backbone's, so that a head pooling them inside the model never sees the slots).
The hooks run before each layer's `forward`, outside transformers' gradient-checkpointing region, so
checkpointed layers recompute from the already widened inputs.

The hooks hold no reference to the wrapper: the wrapper's `forward` publishes its tokens (and afterwards the
widening) in a thread-local, and the hooks read them there. `nn.DataParallel` replicas share their originals'
hook dictionaries and run in threads of their own, so each replica's layers see that replica's tokens; the
tokens are moved to the hidden states' device and dtype, as `device_map` sharding needs.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..registration import ScPeftType
from ..tuner_utils import WrapsBlockMixin
from .config import PrefixAdapterConfig

_PREFIX = ScPeftType.PREFIX_ADAPTER.prefix
# Per thread: the (tokens, layers) of the wrapped stacks running now (innermost last), and the widening
# `(L + n, n)` of the last stack that ran, until a model-level hook strips the slots from its outputs.
_RUNNING = threading.local()


def _running_prefixes() -> list:
    if not hasattr(_RUNNING, "prefixes"):
        _RUNNING.prefixes = []
    return _RUNNING.prefixes


def find_layer_list(stack: nn.Module, layers_pattern: str | None) -> tuple[str, nn.ModuleList]:
    """The attribute name and the nn.ModuleList of layers inside an encoder stack."""
    candidates = [layers_pattern] if layers_pattern else ["layer", "layers"]
    for name in candidates:
        layers = getattr(stack, name, None)
        if isinstance(layers, nn.ModuleList):
            return name, layers
    module_lists = [
        (name, child) for name, child in stack.named_children() if isinstance(child, nn.ModuleList)
    ]
    if layers_pattern is None and len(module_lists) == 1:
        return module_lists[0]
    raise ValueError(
        f"The prefix adapter wraps an encoder stack that holds its layers in an nn.ModuleList, but "
        f"{type(stack).__name__} has no ModuleList named {candidates} (ModuleLists: "
        f"{[name for name, _ in module_lists]}); pass layers_pattern='<name of the layer list>' or point "
        "target_modules at the encoder stack"
    )


def widen_mask(mask: torch.Tensor | None, num_tokens: int) -> torch.Tensor | None:
    """Make `num_tokens` slots after position 0 attendable in an attention mask over `L` keys.

    Handles the layouts models hand their layers: boolean keep-masks (`[B,1,1,L]` or `[B,1,L,L]`), additive
    float masks (4-D, 0 = attend) and 2-D `[B,L]` keep-masks. The key axis always widens; a query axis longer
    than 1 widens too, the new query rows copying the `<cls>` row (prefix tokens see what `<cls>` sees).
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        fill = True
    else:
        fill = 0.0 if mask.dim() == 4 else 1
    block = torch.full((*mask.shape[:-1], num_tokens), fill, dtype=mask.dtype, device=mask.device)
    mask = torch.cat([mask[..., :1], block, mask[..., 1:]], dim=-1)
    if mask.dim() == 4 and mask.shape[-2] > 1:
        rows = mask[..., :1, :].expand(*mask.shape[:-2], num_tokens, mask.shape[-1])
        mask = torch.cat([mask[..., :1, :], rows, mask[..., 1:, :]], dim=-2)
    return mask


def strip_prefix(value: Any, widened_length: int, num_tokens: int, name: str = "") -> Any:
    """Remove the prefix slots from a stack's outputs: sequence axis 1, both last axes of attention maps."""
    if isinstance(value, torch.Tensor):
        axes = (-2, -1) if "attention" in name else (1,)
        for axis in axes:
            if value.dim() > max(axis, -axis - 1) and value.shape[axis] == widened_length:
                kept = value.shape[axis] - 1 - num_tokens
                value = torch.cat(
                    [value.narrow(axis, 0, 1), value.narrow(axis, 1 + num_tokens, kept)], dim=axis
                )
        return value
    if isinstance(value, ModelOutput):
        return type(value)(
            **{key: strip_prefix(item, widened_length, num_tokens, key) for key, item in value.items()}
        )
    if isinstance(value, tuple | list):
        return type(value)(strip_prefix(item, widened_length, num_tokens, name) for item in value)
    return value


def _before_layer(index: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Pre-hook of layer `index` of a wrapped stack: insert or overwrite the slots, widen the mask."""
    running = _running_prefixes()
    prefix = running[-1] if running else None
    if prefix is None or index < prefix[1][0]:
        return None
    tokens, layers = prefix
    num_tokens = tokens.shape[1]
    args, kwargs = list(args), dict(kwargs)
    if index in layers:
        hidden = args[0] if args else kwargs["hidden_states"]
        layer_tokens = tokens[layers.index(index)].to(device=hidden.device, dtype=hidden.dtype)
        layer_tokens = layer_tokens.expand(hidden.shape[0], -1, -1)
        # the first targeted layer inserts the slots, later ones overwrite them
        rest = hidden[:, 1:] if index == layers[0] else hidden[:, 1 + num_tokens :]
        hidden = torch.cat([hidden[:, :1], layer_tokens, rest], dim=1)
        if args:
            args[0] = hidden
        else:
            kwargs["hidden_states"] = hidden
    # the stack hands every layer the mask of the unprefixed sequence
    if "attention_mask" in kwargs:
        kwargs["attention_mask"] = widen_mask(kwargs["attention_mask"], num_tokens)
    elif len(args) > 1 and isinstance(args[1], torch.Tensor):
        args[1] = widen_mask(args[1], num_tokens)
    return tuple(args), kwargs


def _strip_model_outputs(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook on the backbone / model: strip the slots from the hidden states and attentions it returns."""
    widening, _RUNNING.widening = getattr(_RUNNING, "widening", None), None
    if widening is None or not isinstance(output, ModelOutput):
        return None
    for key, value in list(output.items()):
        if "hidden_states" in key or "attentions" in key:
            output[key] = strip_prefix(value, *widening, key)
    return output


class PrefixAdapterLayer(nn.Module, WrapsBlockMixin):
    """Wraps an encoder stack; holds per adapter the tokens `[num_layers, num_tokens, hidden]` and the layers."""

    adapter_layer_names = (_PREFIX + "tokens",)
    other_param_names = (_PREFIX + "layers",)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: PrefixAdapterConfig,
        hidden_size: int,
        **kwargs,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scpeft_prefix_adapter_tokens = nn.ParameterDict()
        self.scpeft_prefix_adapter_layers: dict[str, tuple[int, ...]] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features = self.out_features = hidden_size
        self._layers_attribute, layers = find_layer_list(base_layer, config.layers_pattern)
        self._hook_handles = [
            layer.register_forward_pre_hook(partial(_before_layer, index), with_kwargs=True)
            for index, layer in enumerate(layers)
        ]
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    @property
    def num_layers(self) -> int:
        return len(getattr(self.base_layer, self._layers_attribute))

    def update_layer(self, adapter_name: str, config: PrefixAdapterConfig, **kwargs) -> None:
        layers = config.layers_to_transform
        layers = tuple(sorted({layers} if isinstance(layers, int) else set(layers)))
        out_of_range = [index for index in layers if index >= self.num_layers]
        if out_of_range:
            raise ValueError(
                f"layers_to_transform={list(layers)} has indices {out_of_range} outside the {self.num_layers} "
                f"layers of the wrapped stack; use indices 0..{self.num_layers - 1}"
            )
        tokens = torch.zeros(len(layers), config.num_tokens, self.out_features)
        if not config.init_weights:
            nn.init.normal_(tokens, std=0.02)
        self.scpeft_prefix_adapter_tokens[adapter_name] = nn.Parameter(tokens)
        self.scpeft_prefix_adapter_layers[adapter_name] = layers
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _active_prefix(self) -> tuple[torch.Tensor, tuple[int, ...]] | None:
        """Tokens and layers of the active adapter, or None when the stack should run unchanged."""
        if self.disable_adapters:
            return None
        active = [name for name in self.active_adapters if name in self.scpeft_prefix_adapter_tokens]
        if not active:
            return None
        if len(active) > 1:
            raise ValueError(
                f"The prefix adapter runs one adapter at a time, but {active} are active; activate one with "
                "set_adapter(name)"
            )
        return self.scpeft_prefix_adapter_tokens[active[0]], self.scpeft_prefix_adapter_layers[active[0]]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        prefix = self._active_prefix()
        _RUNNING.widening = None
        running = _running_prefixes()
        running.append(prefix)
        try:
            output = self.base_layer(*args, **kwargs)
        finally:
            running.pop()
        if prefix is None:
            return output
        hidden = args[0] if args else kwargs["hidden_states"]
        num_tokens = prefix[0].shape[1]
        _RUNNING.widening = (hidden.shape[1] + num_tokens, num_tokens)
        return strip_prefix(output, *_RUNNING.widening)

    def watch_model_outputs(self, model: nn.Module) -> None:
        """Also strip the slots from the hidden states and attention maps that `model` and its backbone return.

        transformers' BERT records them with hooks on its layers, outside the wrapped stack, so they would still
        contain the prefix slots when a head pools them (Geneformer's mean cell embedding); scGPT collects them
        inside the stack, where `forward` already strips them. The innermost hook strips, the outer ones find
        nothing left to do.
        """
        backbone = getattr(model, "base_model", model)
        watched = [backbone] if backbone is model else [backbone, model]
        self._hook_handles.extend(module.register_forward_hook(_strip_model_outputs) for module in watched)

    def remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Called by peft's `unload()`: detach the hooks and hand back the encoder stack."""
        if merge:
            raise ValueError(
                "The prefix adapter adds tokens to the sequence and cannot be merged into weights"
            )
        self.remove_hooks()
        return self.base_layer

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError("The prefix adapter adds tokens to the sequence and cannot be merged into weights")

    def unmerge(self) -> None:
        """Nothing to undo: prefixes are never merged."""
