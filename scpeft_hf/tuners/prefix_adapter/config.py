"""Configuration of scPEFT's prefix adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from ..registration import ScPeftType


@dataclass
class PrefixAdapterConfig(PeftConfig):
    """scPEFT's prefix: learnable tokens inserted after `<cls>` as real sequence tokens (deep prompt tuning).

    This is not peft's key/value prefix tuning. At the first targeted layer, `num_tokens` tokens are inserted at
    positions `1..num_tokens` (right after `<cls>`); they attend and are attended to like gene tokens and pass
    through the feed-forward blocks. Each later targeted layer overwrites those slots with its own tokens, the
    padding mask is widened so the tokens are attended in padded batches, and the slots are removed after the
    last layer, so the output has the input's length. Tokens start at zero, as in scPEFT; even then they change
    the output, because zero tokens still take part in attention.

    The tuner wraps the whole encoder stack (`target_modules`, default `encoder` for scGPT and BERT/Geneformer):
    widening the mask for later layers and stripping the tokens at the end cannot be done per layer.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": (
                "The encoder stack to wrap (a module holding the layer list), by name or regex. None takes the "
                "default for the model's `model_type` ('encoder' for scgpt and bert)."
            )
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules never to wrap, as a list of names or a regex (peft's semantics)."},
    )
    target_parameters: list[str] | None = field(
        default=None,
        metadata={
            "help": "Declared because peft's matching reads it; the prefix adapter does not support it."
        },
    )
    layers_to_transform: list[int] | int | str | None = field(
        default=None,
        metadata={
            "help": (
                "Indices of the layers that get their own prefix tokens. None takes the first half of the "
                "layers (scPEFT's package default), 'all' every layer (the paper's setting). Resolved to explicit "
                "indices when the adapter is attached, so adapter_config.json records them."
            )
        },
    )
    layers_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Attribute of the wrapped stack that holds the layers (an nn.ModuleList); None tries 'layer' "
            "and 'layers', then the stack's only ModuleList."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": (
                "Modules besides the prefix that are trained and saved, typically the task head. None takes the "
                "task head of the model's `model_type` when the model has one (`classifier` for scGPT "
                "and BERT/Geneformer; older scGPT adapters naming `cls_decoder` are mapped to it)."
            )
        },
    )
    num_tokens: int = field(
        default=8,
        metadata={"help": "Number of prefix tokens per targeted layer (scPEFT package: 8; the paper: 64)."},
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: tokens start at zero, as in scPEFT. False: tokens start from N(0, 0.02^2), e.g. to test "
            "that trained tokens are saved and loaded."
        },
    )
    model_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Hidden size of the model the prefix was attached to; filled in when attached and checked when "
            "the adapter is loaded on a base model."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = ScPeftType.PREFIX_ADAPTER
        if isinstance(self.target_modules, list | tuple | set):
            self.target_modules = list(self.target_modules)
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens <= 0:
            raise ValueError(
                f"num_tokens must be an integer >= 1 (tokens per layer, e.g. 8), got {self.num_tokens!r}"
            )
        if not isinstance(self.init_weights, bool):
            raise ValueError(
                f"init_weights must be True (zeros) or False (random normal), got {self.init_weights!r}"
            )
        if self.target_parameters:
            raise ValueError(
                f"target_parameters={self.target_parameters} is not supported by the prefix adapter; name the "
                "encoder stack in target_modules"
            )
        layers = self.layers_to_transform
        if layers is not None and layers != "all":
            indices = [layers] if isinstance(layers, int) else layers
            if (
                not isinstance(indices, list | tuple)
                or not indices
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)
            ):
                raise ValueError(
                    f"layers_to_transform must be None, 'all', a layer index or a non-empty list of layer indices "
                    f">= 0, got {layers!r}"
                )
