"""Per-`model_type` defaults of the scPEFT tuners, and the settings resolved when an adapter is attached.

Tuners read only a model's `config` (never its classes), so every model-specific choice lives in the tables
below. Geneformer is transformers' own BERT: its `model_type` "geneformer" shares every "bert" default, here and
in peft's own per-model tables (so `LoraConfig(task_type="SEQ_CLS")` needs no `target_modules` on it either).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peft.utils import constants as peft_constants
from torch import nn

# Module whose output the encoder adapter transforms: the attention block's output module (projection,
# residual and, in post-norm layers, norm1), i.e. `x = A(norm1(x + SA(x)))` as in scPEFT.
ENCODER_ADAPTER_TARGET_MODULES: dict[str, list[str]] = {
    "scgpt": ["attention.output"],
    "bert": ["attention.output"],
    "geneformer": ["attention.output"],
}
# Module whose output the token adapter transforms: the expression-value embedding after its LayerNorm
# (scGPT); Geneformer has no value embedding, so its input-embedding LayerNorm takes that place.
TOKEN_ADAPTER_TARGET_MODULES: dict[str, list[str]] = {
    "scgpt": ["value_encoder.norm"],
    "bert": ["embeddings.LayerNorm"],
    "geneformer": ["embeddings.LayerNorm"],
}
# Module the prefix adapter wraps: the encoder stack holding the layer list.
PREFIX_ADAPTER_TARGET_MODULES: dict[str, list[str]] = {
    "scgpt": ["encoder"],
    "bert": ["encoder"],
    "geneformer": ["encoder"],
}
# Task heads trained and saved next to the adapter (`modules_to_save`) when a config leaves it unset. They are
# named `classifier` because peft's SEQ_CLS task type trains and saves modules of that name.
TASK_HEAD_MODULES: dict[str, list[str]] = {
    "scgpt": ["classifier"],
    "bert": ["classifier"],
    "geneformer": ["classifier"],
}
# Head names of older releases, as adapter_config.json files saved then list them: old name -> current name.
LEGACY_TASK_HEAD_MODULES: dict[str, dict[str, str]] = {"scgpt": {"cls_decoder": "classifier"}}


def share_peft_defaults(model_type: str, like: str) -> None:
    """Give `model_type` the entries `like` has in peft's per-model default tables (target modules etc.)."""
    for name in dir(peft_constants):
        table = getattr(peft_constants, name)
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict) and like in table:
            table.setdefault(model_type, table[like])


share_peft_defaults("geneformer", like="bert")


def default_target_modules(
    table: Mapping[str, list[str]], model_config: Mapping[str, Any], method: str
) -> list[str]:
    """`target_modules` for the model's `model_type` from `table`, or an error that says what to pass."""
    model_type = model_config.get("model_type")
    if model_type not in table:
        raise ValueError(
            f"{method} has no default target_modules for model_type {model_type!r} (known: {sorted(table)}); "
            "pass target_modules=[...] with the names of the modules whose output the adapter should transform"
        )
    return list(table[model_type])


def default_modules_to_save(model: nn.Module, model_config: Mapping[str, Any]) -> list[str] | None:
    """The task heads of the model's `model_type` that exist in `model`, or None when there are none."""
    heads = TASK_HEAD_MODULES.get(model_config.get("model_type"), [])
    leaf_names = {name.rpartition(".")[-1] for name, _ in model.named_modules()}
    present = [head for head in heads if head in leaf_names]
    return present or None


def upgrade_legacy_modules_to_save(
    modules_to_save: list[str] | None, model_config: Mapping[str, Any]
) -> list[str] | None:
    """`modules_to_save` with heads' old names (`cls_decoder` for scGPT) replaced by their current ones, so an
    adapter saved by an older release trains and restores the head it saved."""
    renames = LEGACY_TASK_HEAD_MODULES.get(model_config.get("model_type"), {})
    if modules_to_save is None or not renames:
        return modules_to_save
    upgraded = [renames.get(name, name) for name in modules_to_save]
    return list(dict.fromkeys(upgraded))


def resolve_modules_to_save(
    modules_to_save: list[str] | None, model: nn.Module, model_config: Mapping[str, Any]
) -> list[str] | None:
    """The task heads a tuner trains and saves: the config's (old head names upgraded), else the defaults."""
    if modules_to_save is None:
        return default_modules_to_save(model, model_config)
    return upgrade_legacy_modules_to_save(modules_to_save, model_config)


def first_half_of_layers(num_layers: int) -> list[int]:
    """scPEFT's default placement: layers 1..n/2 (1-based), i.e. indices 0..n/2-1."""
    return list(range(max(1, num_layers // 2)))


def resolve_layers(
    layers_to_transform: list[int] | int | str | None, num_layers: int | None, *, default_first_half: bool
) -> list[int] | int | None:
    """Turn the user's `layers_to_transform` into explicit indices for a model with `num_layers` layers.

    None becomes the first half of the layers (when `default_first_half` and the layer count is known), "all"
    becomes every layer. Indices are checked against the layer count.
    """
    if layers_to_transform == "all":
        if num_layers is None:
            raise ValueError(
                "layers_to_transform='all' needs the number of layers, but the model's config has no "
                "num_hidden_layers; pass the layer indices explicitly"
            )
        return list(range(num_layers))
    if layers_to_transform is None:
        return first_half_of_layers(num_layers) if default_first_half and num_layers is not None else None
    if num_layers is not None:
        indices = [layers_to_transform] if isinstance(layers_to_transform, int) else list(layers_to_transform)
        out_of_range = [index for index in indices if not 0 <= index < num_layers]
        if out_of_range:
            raise ValueError(
                f"layers_to_transform={layers_to_transform} has indices {out_of_range} outside this model's "
                f"{num_layers} layers; use indices 0..{num_layers - 1} (or None for the first half, 'all' for all)"
            )
    return layers_to_transform


def check_model_hidden_size(
    config_hidden_size: int | None, model_config: Mapping[str, Any], method: str
) -> int | None:
    """Return the model's hidden size, checking it against the one the adapter was attached to (if recorded)."""
    model_hidden_size = model_config.get("hidden_size")
    if (
        config_hidden_size is not None
        and model_hidden_size is not None
        and config_hidden_size != model_hidden_size
    ):
        raise ValueError(
            f"This {method} was trained on a model with hidden_size {config_hidden_size}, but the base model "
            f"has hidden_size {model_hidden_size}; load it on the base model it was trained for "
            "(see base_model_name_or_path in adapter_config.json)"
        )
    return model_hidden_size if model_hidden_size is not None else config_hidden_size
