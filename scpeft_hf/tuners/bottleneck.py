"""The serial bottleneck adapter `h + up(act(down(h)))` shared by scPEFT's encoder and token adapters.

Both methods put the same adapter on the output of a module; they differ only in where (the attention block's
output vs. the expression-value embedding), in their default width and in whether layers are selected. Each
method subclasses the config, layer and tuner below and keeps its own peft type and parameter prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from .targets import (
    check_model_hidden_size,
    default_target_modules,
    resolve_layers,
    resolve_modules_to_save,
)
from .tuner_utils import BlockTuner, WrapsBlockMixin


@dataclass
class BottleneckAdapterConfig(PeftConfig):
    """Settings shared by the encoder and token adapters; see [`EncoderAdapterConfig`] and [`TokenAdapterConfig`]."""

    # "<method>_only" value of `bias` (peft's convention, e.g. LoRA's "lora_only"); set by each method.
    _bias_only: ClassVar[str] = "adapter_only"

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": (
                "Modules whose output the adapter transforms: a list of names (a module matches when its name "
                "equals an entry or ends with '.' + entry) or a regex matched against full names. None takes "
                "the default for the model's `model_type` (scgpt and bert are known)."
            )
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules never to adapt, as a list of names or a regex (peft's semantics)."},
    )
    target_parameters: list[str] | None = field(
        default=None,
        metadata={
            "help": "Declared because peft's matching reads it; bottleneck adapters wrap module outputs, so it "
            "must stay None."
        },
    )
    layers_to_transform: list[int] | int | str | None = field(
        default=None,
        metadata={
            "help": (
                "Indices of the layers to adapt; the layer index is the first number in a module's name. "
                "None adapts every matched module; 'all' every layer (resolved to indices when attached)."
            )
        },
    )
    layers_pattern: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Name of the layer list (e.g. 'layer') whose index `layers_to_transform` refers to; None "
            "takes the first number in the module name."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": (
                "Modules besides the adapters that are trained and saved, typically the task head. None takes "
                "the task head of the model's `model_type` when the model has one (`classifier` for scGPT "
                "and BERT/Geneformer; older scGPT adapters naming `cls_decoder` are mapped to it)."
            )
        },
    )
    bottleneck_ratio: float = field(
        default=0.25,
        metadata={
            "help": "Bottleneck width as a fraction of the adapted module's output width (rounded, at least 1)."
        },
    )
    activation: str = field(
        default="gelu",
        metadata={"help": "Activation between the down and up projections, a key of transformers' ACT2FN."},
    )
    init_weights: bool | str = field(
        default=True,
        metadata={
            "help": (
                "True or 'zeros': PyTorch default init for the down projection and zeros for the up projection, "
                "so the adapter is an identity at step 0 (our default). False or 'paper': PyTorch default init "
                "for both projections, as the official scPEFT code (not an identity at step 0)."
            )
        },
    )
    bias: str = field(
        default="none",
        metadata={
            "help": "Which biases of the base model to train, with peft's semantics: 'none', 'all', or "
            "'<method>_only' (the biases of the modules the adapter wraps, where they have one)."
        },
    )
    model_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Hidden size of the model the adapter was attached to; filled in when attached and checked "
            "when the adapter is loaded on a base model."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.target_modules, list | tuple | set):
            self.target_modules = list(self.target_modules)
        if not (isinstance(self.bottleneck_ratio, int | float) and self.bottleneck_ratio > 0):
            raise ValueError(
                f"bottleneck_ratio must be a number > 0 (the bottleneck width as a fraction of the module's "
                f"width, e.g. 0.25), got {self.bottleneck_ratio!r}"
            )
        if self.activation not in ACT2FN:
            raise ValueError(
                f"activation {self.activation!r} is not a key of transformers' ACT2FN; use e.g. 'gelu' or 'relu'"
            )
        if not (isinstance(self.init_weights, bool) or self.init_weights in ("zeros", "paper")):
            raise ValueError(
                f"init_weights must be True/'zeros' (identity at init) or False/'paper' (PyTorch default init), "
                f"got {self.init_weights!r}"
            )
        allowed_bias = ("none", "all", self._bias_only)
        if self.bias not in allowed_bias:
            raise ValueError(f"bias must be one of {allowed_bias}, got {self.bias!r}")
        if self.target_parameters:
            raise ValueError(
                f"target_parameters={self.target_parameters} is not supported: bottleneck adapters transform "
                "module outputs; name the modules in target_modules instead"
            )
        _check_layer_indices(self.layers_to_transform)

    @property
    def identity_init(self) -> bool:
        """Whether the up projection starts at zero (the adapter is an identity before training)."""
        return self.init_weights in (True, "zeros")


def _check_layer_indices(layers_to_transform: list[int] | int | str | None) -> None:
    if layers_to_transform is None or layers_to_transform == "all":
        return
    indices = [layers_to_transform] if isinstance(layers_to_transform, int) else layers_to_transform
    if not isinstance(indices, list | tuple) or not all(
        isinstance(index, int) and not isinstance(index, bool) and index >= 0 for index in indices
    ):
        raise ValueError(
            f"layers_to_transform must be None, 'all', a layer index or a list of layer indices >= 0, "
            f"got {layers_to_transform!r}"
        )


def output_width(module: nn.Module, model_config: Mapping[str, Any]) -> int:
    """Width of the last axis of `module`'s output, which the adapter projects down and back up."""
    if isinstance(module, BaseTunerLayer):
        module = module.get_base_layer()
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, Conv1D):
        return module.nf
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    if isinstance(module, nn.LayerNorm | nn.RMSNorm) and module.normalized_shape:
        return module.normalized_shape[-1]
    if isinstance(module, nn.modules.conv._ConvNd):
        raise ValueError(
            f"Cannot put a bottleneck adapter on {type(module).__name__}: its channels are not the last axis of "
            "its output; target a Linear, Embedding, LayerNorm or a block that returns [..., hidden] outputs"
        )
    hidden_size = model_config.get("hidden_size")
    if hidden_size is None:
        raise ValueError(
            f"Cannot tell the output width of {type(module).__name__}: it is not a Linear, Embedding or "
            "LayerNorm and the model's config has no hidden_size; target one of those module types instead"
        )
    return hidden_size


class BottleneckAdapterLayer(nn.Module, WrapsBlockMixin):
    """Wraps a module and adds `up(act(down(h)))` to its output `h` (the first element if it returns a tuple).

    Several active adapters add their updates in parallel: `h + sum_a up_a(act_a(down_a(h)))`. Adapter weights
    follow the wrapped module's device and dtype; the input is cast to the adapter's dtype and the update back
    to the output's dtype.
    """

    # Set by each method: (prefix + "down", prefix + "up") and (prefix + "act",).
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: BottleneckAdapterConfig,
        feature_size: int,
        **kwargs,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        for name in self.adapter_layer_names + self.other_param_names:
            setattr(self, name, nn.ModuleDict())
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features = input_width(base_layer, default=feature_size)
        self.out_features = feature_size
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def __getattr__(self, name: str) -> Any:
        # Model code may reach into the module that is now wrapped (scGPT's pre-norm attention block applies
        # its output module's LayerNorm first): what the wrapper lacks is looked up on the wrapped module.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    @property
    def _down(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[0])

    @property
    def _up(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[1])

    @property
    def _activation(self) -> nn.ModuleDict:
        return getattr(self, self.other_param_names[0])

    def update_layer(self, adapter_name: str, config: BottleneckAdapterConfig, **kwargs) -> None:
        bottleneck = max(1, round(self.out_features * config.bottleneck_ratio))
        down = nn.Linear(self.out_features, bottleneck)
        up = nn.Linear(bottleneck, self.out_features)
        if config.identity_init:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self._down[adapter_name] = down
        self._up[adapter_name] = up
        self._activation[adapter_name] = ACT2FN[config.activation]
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.base_layer(*args, **kwargs)
        if self.disable_adapters:
            return output
        hidden, rebuild = _split_output(output)
        update = None
        for adapter_name in self.active_adapters:
            if adapter_name not in self._down:
                continue
            down = self._down[adapter_name]
            x = self._cast_input_dtype(hidden, down.weight.dtype)
            adapter_update = self._up[adapter_name](self._activation[adapter_name](down(x)))
            update = adapter_update if update is None else update + adapter_update
        if update is None:
            return output
        return rebuild(hidden + update.to(hidden.dtype))

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(
            "A bottleneck adapter cannot be merged into the base weights: up(act(down(h))) is non-linear; "
            "Keep the PeftModel unmerged, or call unload() to drop the adapter"
        )

    def unmerge(self) -> None:
        """Nothing to undo: bottleneck adapters are never merged."""

    def __repr__(self) -> str:
        return f"{self.adapter_layer_names[0].removesuffix('down')}{super().__repr__()}"


def input_width(module: nn.Module, default: int) -> int:
    """`in_features` as peft reports it (vocabulary size for embeddings); `default` for other modules."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0]
    if isinstance(module, nn.Embedding):
        return module.num_embeddings
    return default


def _split_output(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The tensor the adapter transforms and a function that puts the transformed tensor back in place."""
    if isinstance(output, torch.Tensor):
        return output, lambda hidden: hidden
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda hidden: (hidden, *output[1:])
    raise TypeError(
        f"A bottleneck adapter needs the wrapped module to return a tensor or a tuple starting with one, got "
        f"{type(output).__name__}; target a module that returns hidden states"
    )


class BottleneckAdapterModel(BlockTuner):
    """Tuner that wraps every targeted module in the method's [`BottleneckAdapterLayer`] subclass."""

    tuner_layer_cls: type[BottleneckAdapterLayer]
    target_module_mapping: dict[str, list[str]]
    # whether layers_to_transform=None means "the first half of the layers"
    default_first_half_layers: ClassVar[bool]

    def _prepare_adapter_config(self, peft_config: BottleneckAdapterConfig, model_config: dict) -> PeftConfig:
        # Resolved settings are written into the config, so adapter_config.json records what was attached.
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(
                self.target_module_mapping, model_config, self.method_name
            )
        peft_config.layers_to_transform = resolve_layers(
            peft_config.layers_to_transform,
            model_config.get("num_hidden_layers"),
            default_first_half=self.default_first_half_layers,
        )
        peft_config.model_hidden_size = check_model_hidden_size(
            peft_config.model_hidden_size, model_config, self.method_name
        )
        peft_config.modules_to_save = resolve_modules_to_save(
            peft_config.modules_to_save, self.model, model_config
        )
        return peft_config

    def _create_and_replace(
        self,
        peft_config: BottleneckAdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config)
            return
        width = output_width(target, self.get_model_config(self.model))
        new_module = self.tuner_layer_cls(target, adapter_name, peft_config, feature_size=width)
        if adapter_name not in self.active_adapters:
            # an added adapter stays frozen until it is activated
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
